#!/bin/sh
# Usage: compose-init.sh UID:GID KEYS_SOURCE_DIR KEYS_DIR VOLUME...
# The compose stack's one-shot set-up, run as root before anything else (docker-compose.yml,
# service init-volumes). Docker creates named volumes owned by root, and every other service
# runs as the image's non-root user, so: each VOLUME (and KEYS_DIR) is handed to UID:GID
# (the folder itself, not its contents: files the services write are theirs already). An API
# keys file KEYS_SOURCE_DIR/api-keys.json, as `alliance-risk apikey create` writes it on the
# host (mode 0600, owned by the host's user), is copied to KEYS_DIR/api-keys.json readable by
# UID:GID alone; without one, a copy left from an earlier start is removed.
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

keys_file="$keys_dir/api-keys.json"
if [ -f "$keys_source/api-keys.json" ]; then
    # Copy then rename: the API never sees a half-written keys file.
    cp "$keys_source/api-keys.json" "$keys_file.tmp"
    chown "$owner" "$keys_file.tmp"
    chmod 0400 "$keys_file.tmp"
    mv -f "$keys_file.tmp" "$keys_file"
    echo "compose-init: API keys file installed" >&2
else
    rm -f "$keys_file"
fi
echo "compose-init: volumes owned by $owner" >&2
