"""The feature registry: names, groups, serialisation, and the generated docs/features.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from features.docs import render_feature_docs
from features.profiles import OVERALL, PROFILES, SRS, InstrumentProfile
from features.registry import (
    PER_GROUP_STATS,
    Feature,
    FeatureKind,
    FeatureRegistry,
    feature_registry,
)

ROOT = Path(__file__).resolve().parents[2]
ALL_PROFILES = pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))


@ALL_PROFILES
def test_groups_follow_the_profile(profile: InstrumentProfile) -> None:
    reg = feature_registry(profile)
    assert reg.groups == (*profile.element_names, OVERALL, "attendance", "engagement")
    assert reg.rating_groups == (*profile.element_names, OVERALL)
    for group in reg.rating_groups:
        stats = {f.stat for f in reg.features if f.group == group}
        assert stats >= PER_GROUP_STATS
    # The feature families are all there.
    for name in (
        f"{OVERALL}_early_mean",
        f"{OVERALL}_slope",
        f"{OVERALL}_unrepaired",
        f"{OVERALL}_ceiling_streak",
        f"{OVERALL}_drop_alert",
        f"{OVERALL}_any_element_below_cutoff",
        "attendance_no_show_rate",
        "attendance_no_show_first3",
        "attendance_missed_streak",
        "attendance_last_late_cancel",
        "attendance_gap_max_days",
        "engagement_days_since_intake",
        "engagement_days_since_attended",
        "engagement_unrated_share",
        "engagement_landmark",
    ):
        assert name in reg.names


@ALL_PROFILES
def test_names_descriptions_units_kinds(profile: InstrumentProfile) -> None:
    reg = feature_registry(profile, include_covariates=True)
    assert len(set(reg.names)) == len(reg.names)
    kinds = set(get_args(FeatureKind))
    for f in reg.features:
        assert re.fullmatch(r"[a-z0-9_]+", f.name)
        assert f.name == f"{f.group}_{f.stat}"
        assert f.kind in kinds
        assert f.unit and f.description.endswith(".")
        assert "{" not in f.description and "{" not in f.unit
    levels = [f for f in reg.features if f.kind == "level"]
    scale = f"{profile.scale_min:g}-{profile.scale_max:g}"
    assert all(scale in f.unit for f in levels)


def test_positions_and_lookup() -> None:
    reg = feature_registry(SRS)
    positions = np.sort(np.concatenate(list(reg.index_of_group.values())))
    np.testing.assert_array_equal(positions, np.arange(len(reg.names)))
    for group, idx in reg.index_of_group.items():
        assert all(reg.group_of[reg.names[i]] == group for i in idx)
    assert reg.by_name("goals_slope").unit == "points per rated session"
    with pytest.raises(KeyError, match="no feature 'goals_magic'"):
        reg.by_name("goals_magic")


@ALL_PROFILES
def test_layout_fills_every_column_once(profile: InstrumentProfile) -> None:
    reg = feature_registry(profile, include_covariates=True)
    cols = np.sort(np.concatenate([c for c, _ in reg.layout.values()]))
    np.testing.assert_array_equal(cols, np.arange(len(reg.names)))


def test_covariates_are_a_switch_and_never_gender() -> None:
    plain = feature_registry(SRS)
    with_cov = feature_registry(SRS, include_covariates=True)
    assert not plain.include_covariates and with_cov.include_covariates
    assert with_cov.names[: len(plain.names)] == plain.names
    assert with_cov.names[len(plain.names) :] == ("client_age", "client_age_under_25")
    assert not any("gender" in n or "referral" in n for n in with_cov.names)
    assert feature_registry(SRS) is plain  # cached


@ALL_PROFILES
def test_json_round_trip(profile: InstrumentProfile) -> None:
    reg = feature_registry(profile, include_covariates=True)
    restored = FeatureRegistry.from_dict(json.loads(json.dumps(reg.to_dict())))
    assert restored == reg
    assert restored.profile == profile
    assert restored.names == reg.names


def test_from_dict_rejects_unknown_format_and_bad_features() -> None:
    data = feature_registry(SRS).to_dict()
    with pytest.raises(ValueError, match="unsupported feature registry format"):
        FeatureRegistry.from_dict({**data, "format": 99})
    feature = Feature("goals_last", "goals", "x.", "points", "level")
    with pytest.raises(ValueError, match="unique"):
        FeatureRegistry(SRS, (feature, feature))
    with pytest.raises(ValueError, match="<group>_<stat>"):
        FeatureRegistry(SRS, (Feature("last", "goals", "x.", "points", "level"),))


def test_docs_features_md_is_the_rendering_of_the_registry() -> None:
    committed = (ROOT / "docs" / "features.md").read_text(encoding="utf-8")
    assert committed == render_feature_docs(), "run scripts/gen_feature_docs.py"
    for profile in PROFILES.values():
        for name in feature_registry(profile, include_covariates=True).names:
            assert f"`{name}`" in committed
