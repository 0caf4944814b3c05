"""Promotion gates (pure) and promotion through a real, embedded SQLite model registry."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.registry import (
    CHAMPION_ALIAS,
    GateCheck,
    GateResult,
    champion,
    evaluate_gates,
    promote,
    resolve_version,
)


def _subgroups(*rows: tuple[str, str, int, float]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["subgroup", "value", "n", "ece"])


GOOD_SUBGROUPS = _subgroups(("gender", "female", 600, 0.03), ("gender", "male", 500, 0.04))


def _checks(result: GateResult) -> dict[str, GateCheck]:
    return {c.name: c for c in result.checks}


# --------------------------------------------------------------------------- evaluate_gates


def test_without_champion_auroc_check_passes_and_says_so() -> None:
    result = evaluate_gates({"auroc": 0.55, "ece": 0.02}, None, GOOD_SUBGROUPS)
    auroc = _checks(result)["auroc_drop"]
    assert auroc.passed and auroc.value is None
    assert auroc.detail == "no champion: passes"
    assert result.passed
    assert [c.name for c in result.checks] == ["auroc_drop", "ece", "subgroup_ece"]


def test_a_worse_candidate_is_refused_on_auroc() -> None:
    result = evaluate_gates({"auroc": 0.78, "ece": 0.02}, {"auroc": 0.80}, GOOD_SUBGROUPS)
    auroc = _checks(result)["auroc_drop"]
    assert not result.passed
    assert not auroc.passed
    assert auroc.value == pytest.approx(0.02)
    assert result.failed == (auroc,)


def test_auroc_drop_boundary_is_inclusive() -> None:
    result = evaluate_gates({"auroc": 0.795, "ece": 0.02}, {"auroc": 0.80}, GOOD_SUBGROUPS)
    assert result.passed
    assert _checks(result)["auroc_drop"].value == pytest.approx(0.005)


def test_ece_above_threshold_fails() -> None:
    result = evaluate_gates({"auroc": 0.9, "ece": 0.051}, {"auroc": 0.8}, GOOD_SUBGROUPS)
    assert not result.passed
    assert [c.name for c in result.failed] == ["ece"]


def test_nan_metric_fails_its_check() -> None:
    result = evaluate_gates({"auroc": math.nan, "ece": 0.01}, {"auroc": 0.8}, GOOD_SUBGROUPS)
    assert [c.name for c in result.failed] == ["auroc_drop"]
    assert json.loads(result.to_json())[0]["value"] is None


def test_only_subgroups_with_enough_rows_are_judged() -> None:
    subgroups = _subgroups(
        ("clinic", "A", 1200, 0.02),
        ("clinic", "B", 150, 0.40),  # too small to judge: ignored
        ("age_band", "65+", 250, 0.12),
    )
    result = evaluate_gates({"auroc": 0.8, "ece": 0.02}, None, subgroups)
    check = _checks(result)["subgroup_ece"]
    assert not check.passed
    assert check.value == pytest.approx(0.12)
    assert "age_band=65+ (n=250" in check.detail
    assert "clinic=B" not in check.detail
    assert "1 subgroup(s) below 200 rows not judged" in check.detail

    relaxed = evaluate_gates({"auroc": 0.8, "ece": 0.02}, None, subgroups, max_subgroup_ece=0.15)
    assert relaxed.passed


def test_no_judged_subgroup_passes_with_a_note() -> None:
    result = evaluate_gates(
        {"auroc": 0.8, "ece": 0.02}, None, _subgroups(("clinic", "A", 199, 0.5))
    )
    check = _checks(result)["subgroup_ece"]
    assert check.passed and check.value is None
    assert "no subgroup with at least 200 rows" in check.detail


def test_missing_inputs_raise() -> None:
    with pytest.raises(ValueError, match="candidate metrics have no 'ece'"):
        evaluate_gates({"auroc": 0.8}, None, GOOD_SUBGROUPS)
    with pytest.raises(ValueError, match="champion metrics have no 'auroc'"):
        evaluate_gates({"auroc": 0.8, "ece": 0.01}, {"ece": 0.01}, GOOD_SUBGROUPS)
    with pytest.raises(ValueError, match="lacks column\\(s\\): ece"):
        evaluate_gates({"auroc": 0.8, "ece": 0.01}, None, GOOD_SUBGROUPS.drop(columns="ece"))


def test_evaluate_gates_does_not_mutate_inputs() -> None:
    subgroups = GOOD_SUBGROUPS.copy()
    candidate = {"auroc": 0.8, "ece": 0.01}
    evaluate_gates(candidate, {"auroc": 0.81}, subgroups)
    pd.testing.assert_frame_equal(subgroups, GOOD_SUBGROUPS)
    assert candidate == {"auroc": 0.8, "ece": 0.01}


unit = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    cand_auroc=unit,
    champ_auroc=st.none() | unit,
    ece=unit,
    sub_ece=st.lists(st.tuples(st.integers(0, 1000), unit), max_size=5),
)
def test_passed_iff_every_check_passed_and_matches_the_rules(
    cand_auroc: float,
    champ_auroc: float | None,
    ece: float,
    sub_ece: list[tuple[int, float]],
) -> None:
    subgroups = _subgroups(*[("clinic", str(i), n, e) for i, (n, e) in enumerate(sub_ece)])
    champ = None if champ_auroc is None else {"auroc": champ_auroc}
    result = evaluate_gates({"auroc": cand_auroc, "ece": ece}, champ, subgroups)
    expected = (
        (champ_auroc is None or champ_auroc - cand_auroc <= 0.01)
        and ece <= 0.05
        and all(e <= 0.10 for n, e in sub_ece if n >= 200)
    )
    assert result.passed == expected == all(c.passed for c in result.checks)
    assert len(json.loads(result.to_json())) == 3


# --------------------------------------------------------------------------- registry


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, mlflow_sqlite_template: Path) -> MlflowClient:
    """One real SQLite registry for the module; each test registers its own model name."""
    path = tmp_path_factory.mktemp("registry") / "mlflow.db"
    shutil.copyfile(mlflow_sqlite_template, path)
    return MlflowClient(tracking_uri=f"sqlite:///{path}", registry_uri=f"sqlite:///{path}")


_names = count()


@pytest.fixture
def model(client: MlflowClient, tmp_path: Path) -> Iterator[str]:
    """A fresh registered model with three versions (no artifacts needed to test aliases)."""
    name = f"alliance-risk-{next(_names)}"
    client.create_registered_model(name)
    for _ in range(3):
        client.create_model_version(name, source=(tmp_path / "model").as_uri(), run_id=None)
    yield name


PASSED = GateResult(True, (GateCheck("ece", 0.01, 0.05, True, "candidate ECE 0.0100"),))
FAILED = GateResult(False, (GateCheck("ece", 0.09, 0.05, False, "candidate ECE 0.0900"),))


# --------------------------------------------------------------------------- landmark bands


def _bands(*rows: tuple[str, int, int, float, float, float, float]) -> pd.DataFrame:
    columns = ["landmark", "n_clients", "events", "ece", "calibration_intercept"]
    return pd.DataFrame(rows, columns=[*columns, "citl_ci_low", "citl_ci_high"])


GOOD_BANDS = _bands(
    ("1-3", 900, 400, 0.02, 0.05, -0.1, 0.2),
    ("4-6", 800, 150, 0.03, -0.08, -0.3, 0.14),
    # A point estimate past the target whose interval still reaches it: not refused.
    ("7-10", 600, 70, 0.06, 0.3, 0.05, 0.55),
)


def test_well_calibrated_bands_pass() -> None:
    result = evaluate_gates({"auroc": 0.8, "ece": 0.02}, None, GOOD_SUBGROUPS, bands=GOOD_BANDS)
    band = _checks(result)["landmark_band_calibration"]
    assert result.passed and band.passed
    assert band.value == pytest.approx(0.3)
    assert "3 landmark band(s) judged" in band.detail


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (("4-6", 800, 150, 0.03, 0.31, 0.12, 0.5), "CITL +0.310 [+0.120, +0.500]"),  # runs low
        (("4-6", 800, 150, 0.03, -0.4, -0.6, -0.2), "CITL -0.400 [-0.600, -0.200]"),  # ... high
        (("4-6", 800, 150, 0.03, 0.0, float("nan"), 0.1), "CITL +0.000 [+nan"),  # unmeasured
    ],
)
def test_a_band_outside_the_limits_fails_and_is_named(row, reason) -> None:
    bands = _bands(GOOD_BANDS.iloc[0].tolist(), row, GOOD_BANDS.iloc[2].tolist())
    result = evaluate_gates({"auroc": 0.8, "ece": 0.02}, None, GOOD_SUBGROUPS, bands=bands)
    band = _checks(result)["landmark_band_calibration"]
    assert not result.passed and not band.passed
    assert "landmarks 4-6 (n=800 clients, events=150" in band.detail and reason in band.detail
    assert "1-3" not in band.detail and "7-10" not in band.detail
    assert result.failed == (band,)


def test_small_bands_are_not_judged_and_the_pooled_gate_alone_would_pass() -> None:
    bands = _bands(GOOD_BANDS.iloc[0].tolist(), ("11+", 120, 30, 0.2, 0.9, 0.3, 1.5))
    result = evaluate_gates({"auroc": 0.8, "ece": 0.02}, None, GOOD_SUBGROUPS, bands=bands)
    band = _checks(result)["landmark_band_calibration"]
    assert result.passed
    assert "1 band(s) below 50 dropouts not judged" in band.detail
    # The same band table with the small band judged: refused although pooled ECE is 0.02.
    strict = evaluate_gates(
        {"auroc": 0.8, "ece": 0.02}, None, GOOD_SUBGROUPS, bands=bands, band_min_events=20
    )
    assert (
        not strict.passed and "landmarks 11+" in _checks(strict)["landmark_band_calibration"].detail
    )


def test_band_table_without_its_columns_raises() -> None:
    with pytest.raises(ValueError, match="landmark band table lacks column"):
        evaluate_gates(
            {"auroc": 0.8, "ece": 0.02},
            None,
            GOOD_SUBGROUPS,
            bands=GOOD_BANDS.drop(columns="citl_ci_low"),
        )


def _simulated_band(n_clients: int, prevalence: float, shift: float, seed: int) -> pd.DataFrame:
    """One band of ``n_clients`` x 4 landmark rows whose client shares one outcome; the true
    risk is the prediction's shifted by ``shift`` log-odds (0: perfectly calibrated)."""
    import numpy as np

    from training.metrics import evaluate

    rng = np.random.default_rng(seed)
    base = np.log(prevalence / (1 - prevalence))
    z = base + rng.normal(0.0, 0.6, n_clients)
    p = 1 / (1 + np.exp(-z))
    y = rng.random(n_clients) < 1 / (1 + np.exp(-(z + shift)))
    client = np.repeat(np.arange(n_clients), 4)
    frame = pd.DataFrame({"band": "4-6"}, index=client)
    report = evaluate(y[client].astype(int), p[client], frame=frame, by=("band",),
                      cluster=client, n_boot=0)  # fmt: skip
    return report.per_group["band"].rename(columns={"value": "landmark"})


def test_a_perfectly_calibrated_band_passes_in_most_draws() -> None:
    """200 clients x 4 rows at a dropout rate of 0.09: the old |CITL| <= 0.25 rule refused
    ~31% of these perfectly calibrated draws; the interval rule refuses at most 5%."""
    passed = [
        evaluate_gates(
            {"auroc": 0.8, "ece": 0.02},
            None,
            GOOD_SUBGROUPS,
            bands=_simulated_band(200, 0.09, 0.0, seed),
            band_min_events=20,
        ).passed
        for seed in range(20)
    ]
    assert sum(passed) >= 19


def test_a_band_shifted_by_0_4_log_odds_fails() -> None:
    for seed in range(3):
        bands = _simulated_band(2000, 0.2, 0.4, seed)
        result = evaluate_gates({"auroc": 0.8, "ece": 0.02}, None, GOOD_SUBGROUPS, bands=bands)
        assert not result.passed, bands
        assert "landmarks 4-6" in _checks(result)["landmark_band_calibration"].detail


def _tags(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    return dict(client.get_model_version(name, version).tags)


def test_resolve_version_latest_and_explicit(client: MlflowClient, model: str) -> None:
    assert str(resolve_version(client, model, None).version) == "3"
    assert str(resolve_version(client, model, "2").version) == "2"
    assert str(resolve_version(client, model, 1).version) == "1"
    client.create_registered_model("empty-model")
    with pytest.raises(LookupError, match="has no versions"):
        resolve_version(client, "empty-model", None)
    with pytest.raises(MlflowException):
        resolve_version(client, model, "9")


def test_champion_is_none_until_promoted(client: MlflowClient, model: str) -> None:
    assert champion(client, model) is None
    assert champion(client, "no-such-model") is None
    promote(client, model, "1", gate=PASSED, actor="analyst")
    current = champion(client, model)
    assert current is not None and str(current.version) == "1"


def test_passing_gates_move_the_alias_and_record_the_audit(
    client: MlflowClient, model: str
) -> None:
    first = promote(client, model, "1", gate=PASSED, actor="analyst")
    assert first.promoted and not first.forced and first.previous_champion is None
    second = promote(client, model, 2, gate=PASSED, actor="analyst", reason="retrained on Q3")
    assert second.promoted and second.previous_champion == "1"
    assert str(client.get_model_version_by_alias(model, CHAMPION_ALIAS).version) == "2"

    tags = _tags(client, model, "2")
    assert json.loads(tags["promotion.gates"]) == [
        {
            "name": "ece",
            "value": 0.01,
            "threshold": 0.05,
            "passed": True,
            "detail": "candidate ECE 0.0100",
        }
    ]
    assert tags["promotion.forced"] == "false"
    assert tags["promotion.actor"] == "analyst"
    assert tags["promotion.reason"] == "retrained on Q3"
    assert tags["promotion.previous_champion"] == "1"
    assert tags["promotion.at"] == second.at and second.at.endswith("+00:00")
    assert _tags(client, model, "1")["promotion.previous_champion"] == ""


def test_failing_gates_refuse_without_raising(client: MlflowClient, model: str) -> None:
    promote(client, model, "1", gate=PASSED, actor="analyst")
    result = promote(client, model, "3", gate=FAILED, actor="analyst")
    assert not result.promoted
    assert "gates failed: ece: candidate ECE 0.0900" in result.message
    assert result.failed_checks == FAILED.checks
    assert str(client.get_model_version_by_alias(model, CHAMPION_ALIAS).version) == "1"
    tags = _tags(client, model, "3")
    assert tags["promotion.refused_at"] == result.at
    assert tags["promotion.refused_by"] == "analyst"
    assert json.loads(tags["promotion.failed_checks"])[0]["name"] == "ece"
    assert "promotion.forced" not in tags


def test_no_gate_and_no_force_is_refused(client: MlflowClient, model: str) -> None:
    result = promote(client, model, "1", gate=None)
    assert not result.promoted
    assert "no gate evaluation" in result.message
    assert champion(client, model) is None


def test_force_needs_a_reason(client: MlflowClient, model: str) -> None:
    for reason in (None, "", "   "):
        with pytest.raises(ValueError, match="forced promotion needs a non-empty reason"):
            promote(client, model, "1", gate=FAILED, force=True, reason=reason)
    assert champion(client, model) is None


def test_forced_promotion_records_who_when_why(client: MlflowClient, model: str) -> None:
    promote(client, model, "1", gate=PASSED, actor="analyst")
    result = promote(
        client, model, "2", gate=FAILED, force=True, reason="clinic pilot sign-off", actor="lead"
    )
    assert result.promoted and result.forced
    assert result.failed_checks == FAILED.checks
    tags = _tags(client, model, "2")
    assert tags["promotion.forced"] == "true"
    assert tags["promotion.reason"] == "clinic pilot sign-off"
    assert tags["promotion.actor"] == "lead"
    assert tags["promotion.previous_champion"] == "1"
    assert json.loads(tags["promotion.gates"])[0]["passed"] is False
    assert str(champion(client, model).version) == "2"  # type: ignore[union-attr]


def test_force_with_passing_gates_is_not_recorded_as_forced(
    client: MlflowClient, model: str
) -> None:
    result = promote(client, model, "1", gate=PASSED, force=True, reason="routine")
    assert result.promoted and not result.forced
    assert _tags(client, model, "1")["promotion.forced"] == "false"


def test_actor_defaults_to_the_os_user(client: MlflowClient, model: str) -> None:
    result = promote(client, model, "1", gate=PASSED)
    assert result.actor
    assert _tags(client, model, "1")["promotion.actor"] == result.actor


def test_promoting_the_champion_again_changes_nothing(client: MlflowClient, model: str) -> None:
    promote(client, model, "1", gate=PASSED, actor="a")
    before = _tags(client, model, "1")
    again = promote(client, model, "1", gate=PASSED, actor="b")
    assert again.promoted and "already the champion" in again.message
    assert _tags(client, model, "1") == before


def test_unknown_version_raises(client: MlflowClient, model: str) -> None:
    with pytest.raises(MlflowException):
        promote(client, model, "42", gate=PASSED)
