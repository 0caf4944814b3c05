"""Write docs/features.md from the feature registry (``python scripts/gen_feature_docs.py``).

``--check`` exits 1 when the committed file differs from the rendering, without writing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.docs import render_feature_docs  # noqa: E402

TARGET = ROOT / "docs" / "features.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare, do not write")
    args = parser.parse_args()
    text = render_feature_docs()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            sys.stderr.write(
                f"{TARGET.relative_to(ROOT)} is stale: run scripts/gen_feature_docs.py\n"
            )
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    sys.stdout.write(f"wrote {TARGET.relative_to(ROOT)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
