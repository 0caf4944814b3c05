#!/usr/bin/env bash
# Make sure the feature kernel (features/_kernel.c) can be compiled for the Python given as $1
# (default python3): a C compiler and that Python's headers. When either is missing and we run as
# root with apt-get (CI on a fresh Debian machine), installs Debian's gcc, and python3-dev when
# the headers are missing; otherwise says what is missing and fails. Idempotent.
set -euo pipefail
python=${1:-python3}
include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')

have_compiler() { command -v "${CC:-cc}" >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1; }
have_headers() { [[ -f "$include/Python.h" ]]; }

if have_compiler && have_headers; then
    exit 0
fi
packages=()
have_compiler || packages+=(gcc libc6-dev)
have_headers || packages+=(python3-dev)
if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-compiler: the feature kernel needs a C compiler and Python's headers" \
        "($include/Python.h); missing: ${packages[*]}. Install them (Debian: apt-get install" \
        "${packages[*]}) and run make again." >&2
    exit 1
fi
echo "ensure-compiler: installing Debian's ${packages[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
if have_compiler && have_headers; then
    exit 0
fi
echo "ensure-compiler: installed ${packages[*]} but $include/Python.h or a compiler is still" \
    "missing (a Python not from Debian needs its own headers)" >&2
exit 1
