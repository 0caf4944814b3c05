"""``summarise_shadow``: the shadow comparison files as promotion evidence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from training.promotion import summarise_shadow


def _write(
    path: Path,
    rows: list[tuple[str, str, float, float, str, str]],
    *,
    model: str = "m",
    at: str = "2026-12-07T00:00:00+00:00",
) -> Path:
    lines = [
        json.dumps(
            {
                "at": at,
                "model": model,
                "champion_version": c,
                "challenger_version": d,
                "p_champion": p0,
                "p_challenger": p1,
                "band_champion": b0,
                "band_challenger": b1,
            }
        )  # fmt: skip
        for c, d, p0, p1, b0, b1 in rows
    ]
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_summary_of_one_pair_of_versions(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "shadow.jsonl",
        [
            ("1", "2", 0.10, 0.12, "low", "low"),
            ("1", "2", 0.30, 0.20, "moderate", "low"),
            ("1", "2", 0.50, 0.70, "moderate", "high"),
            ("1", "2", 0.80, 0.50, "high", "moderate"),
            ("1", "3", 0.80, 0.10, "high", "low"),  # another challenger
            ("0", "2", 0.80, 0.10, "high", "low"),  # another champion
        ],
    )
    with path.open("a") as f:
        f.write('{"at": "2026-12-07T0')  # a torn last line
    s = summarise_shadow([path], model="m", challenger_version="2", champion_version="1")
    assert s.comparisons == 4 and s.other_lines == 3
    assert s.mean_abs_difference == pytest.approx((0.02 + 0.10 + 0.20 + 0.30) / 4)
    assert s.p95_abs_difference == pytest.approx(0.285)
    assert s.band_agreement == pytest.approx(0.25)
    assert s.into_high == pytest.approx(0.25) and s.out_of_high == pytest.approx(0.25)
    recorded = json.loads(s.to_json())
    assert recorded["comparisons"] == 4 and recorded["files"] == ["shadow.jsonl"]


def test_rotated_files_add_up_and_no_comparisons_give_nan(tmp_path: Path) -> None:
    old = _write(tmp_path / "shadow.jsonl.1", [("1", "2", 0.1, 0.2, "low", "low")])
    new = _write(tmp_path / "shadow.jsonl", [("1", "2", 0.3, 0.3, "low", "low")])
    assert (
        summarise_shadow(
            [old, new], model="m", challenger_version="2", champion_version="1"
        ).comparisons
        == 2
    )
    none = summarise_shadow([new], model="m", challenger_version="9", champion_version="1")
    assert none.comparisons == 0 and math.isnan(none.band_agreement)
    assert none.first_at is None and none.last_at is None
    assert json.loads(none.to_json())["band_agreement"] is None


def test_lines_of_another_model_with_the_same_versions_do_not_mix_in(tmp_path: Path) -> None:
    path = tmp_path / "shadow.jsonl"
    _write(path, [("1", "2", 0.1, 0.1, "low", "low")] * 3, model="alliance-risk")
    _write(path, [("1", "2", 0.9, 0.1, "high", "low")] * 5, model="alliance-risk-srs")
    s = summarise_shadow(
        [path], model="alliance-risk", challenger_version="2", champion_version="1"
    )
    assert s.comparisons == 3 and s.other_lines == 5
    assert s.band_agreement == 1.0 and s.mean_abs_difference == 0.0
    assert json.loads(s.to_json())["model"] == "alliance-risk"


def test_the_time_span_of_the_comparisons_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "shadow.jsonl"
    for at in (
        "2026-12-03T10:00:00+00:00",
        "2026-12-01T09:00:00+00:00",
        "2026-12-05T08:30:00+00:00",
    ):
        _write(path, [("1", "2", 0.2, 0.3, "low", "low")], at=at)
    _write(path, [("1", "9", 0.2, 0.3, "low", "low")], at="2026-11-01T00:00:00+00:00")
    s = summarise_shadow([path], model="m", challenger_version="2", champion_version="1")
    recorded = json.loads(s.to_json())
    assert (recorded["first_at"], recorded["last_at"]) == (
        "2026-12-01T09:00:00+00:00",
        "2026-12-05T08:30:00+00:00",
    )
