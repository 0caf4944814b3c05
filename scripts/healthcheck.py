"""Container healthcheck: exit 0 when URL answers 200 within 4 s, else 1.

Usage: ``python healthcheck.py URL``. The image has no curl; docker-compose.yml runs this for
the MLflow server (``/health``) and the API (``/readyz``, ready once a model is loaded).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: healthcheck.py URL", file=sys.stderr)
        return 2
    # The target is this container's own loopback port: never through a proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(argv[1], timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
