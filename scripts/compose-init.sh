#!/bin/sh
# Usage: compose-init.sh UID:GID KEYS_SOURCE_DIR KEYS_DIR VOLUME...
# The compose stack's one-shot set-up, run as root before anything else (docker-compose.yml,
# service init-volumes). Docker creates named volumes owned by root, and every other service
# runs as the image's non-root user, so: each VOLUME (and KEYS_DIR) is handed to UID:GID
# (the folder itself, not its contents: files the services write are theirs already). Each
# JSON file in KEYS_SOURCE_DIR (api-keys.json, as `alliance-risk apikey create` writes it on
# the host, mode 0600 and owned by the host's user; a JWT issuer's key set for `jwks_file`) is
# copied to KEYS_DIR readable by UID:GID alone; a copy whose source is gone is removed. The API
# reads these files when it starts: after changing one, run this step again, then restart it.
# A KEYS_SOURCE_DIR that the host user cannot write (Docker creates a missing bind-mount
# source as root) only means no keys: nothing here needs to write there.
set -eu

owner="${1:?usage: compose-init.sh UID:GID KEYS_SOURCE_DIR KEYS_DIR VOLUME...}"
keys_source="${2:?missing KEYS_SOURCE_DIR}"
keys_dir="${3:?missing KEYS_DIR}"
shift 3

for dir in "$keys_dir" "$@"; do
    mkdir -p "$dir"
    chown "$owner" "$dir"
    chmod 0750 "$dir"
done

for installed in "$keys_dir"/*.json; do
    [ -f "$installed" ] || continue
    [ -f "$keys_source/$(basename "$installed")" ] || rm -f "$installed"
done
for source in "$keys_source"/*.json; do
    [ -f "$source" ] || continue
    target="$keys_dir/$(basename "$source")"
    # Copy then rename: the API never sees a half-written file.
    cp "$source" "$target.tmp"
    chown "$owner" "$target.tmp"
    chmod 0400 "$target.tmp"
    mv -f "$target.tmp" "$target"
    echo "compose-init: installed $(basename "$source")" >&2
done
echo "compose-init: volumes owned by $owner" >&2
