#!/usr/bin/env bash
# Print the bin directory of a PostgreSQL server install (initdb, pg_ctl, postgres), installing
# Debian's `postgresql` package first if none is found. Idempotent: a second run installs nothing.
# The integration tests' `postgres_server` fixture runs it; CI runs as root on a fresh Debian
# machine with no docker engine, so the server comes from Debian's packages.
# Only the bin directory goes to stdout; everything else goes to stderr.
set -euo pipefail

find_bin() {
    local dir
    # Debian and Ubuntu keep server binaries out of PATH, one directory per major version.
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
            echo "$dir"
            return 0
        fi
    done
    # Other layouts put them on PATH.
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return 0
    fi
    return 1
}

if bin_dir=$(find_bin); then
    echo "$bin_dir"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "ensure-postgres: PostgreSQL server binaries (initdb, pg_ctl) not found, and not root" \
        "so cannot install them. Install Debian's 'postgresql' package, or run as root." >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "ensure-postgres: PostgreSQL not found and apt-get is not available;" \
        "install a PostgreSQL server by hand." >&2
    exit 1
fi

echo "ensure-postgres: installing Debian's postgresql package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends postgresql >&2

if bin_dir=$(find_bin); then
    echo "$bin_dir"
    exit 0
fi
echo "ensure-postgres: installed 'postgresql' but found no initdb/pg_ctl under" \
    "/usr/lib/postgresql/*/bin or on PATH" >&2
exit 1
