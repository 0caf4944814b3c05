"""docs/data-contract.md stays in step with the code: reason texts, the profile table and
the example tables."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd

from features import validation as v
from features.profiles import PROFILES, SRS

DOC = Path(__file__).resolve().parents[3] / "docs" / "data-contract.md"


def test_every_reason_text_is_in_the_contract_doc() -> None:
    doc = DOC.read_text()
    constants = [
        name for name, value in vars(v).items() if name.isupper() and isinstance(value, str)
    ]
    assert len(constants) >= 18
    missing = [text for text in v.reason_texts() if text not in doc]
    assert missing == []


def test_doc_profile_table_matches_profiles() -> None:
    doc = DOC.read_text()
    for p in PROFILES.values():
        row = (
            f"| `{p.name}` | {', '.join(f'`{col}`' for col in p.columns)} | "
            f"{p.scale_min:g} to {p.scale_max:g} | {p.total} | {p.cutoff_total:g} | "
            f"{p.element_cutoff:g} | {p.drop_points:g} |"
        )
        assert row in doc


def test_doc_examples_are_valid() -> None:
    blocks = dict(
        re.findall(r"<!-- example: (\w+) -->\n```csv\n(.*?)```", DOC.read_text(), re.DOTALL)
    )
    assert set(blocks) == {"sessions", "clients"}
    frames = {
        name: pd.read_csv(io.StringIO(text), dtype="str", keep_default_na=False, na_values=[""])
        for name, text in blocks.items()
    }
    report = v.validate_tables(frames["sessions"], frames["clients"])
    assert report.problems == ()
    assert report.profile is SRS
