"""The cohorts shared by the simulator tests.

One seeded cohort of 12,000 clients per instrument profile, built once per session, so every
tolerance in these tests is several standard errors wide (the SE of a 28% share among ~10,500
ended episodes is ~0.45 points; of Cohen's d between ~2,900 dropouts and ~7,600 completers
~0.02).
"""

from __future__ import annotations

import pytest

from tests.training.simulate.helpers import ALL_PROFILES, N_CLIENTS, SEED
from training.simulate import Cohort, simulate_cohort


@pytest.fixture(scope="session")
def cohorts() -> dict[str, Cohort]:
    return {name: simulate_cohort(N_CLIENTS, seed=SEED, profile=name) for name in ALL_PROFILES}


@pytest.fixture(scope="session")
def cohort(cohorts: dict[str, Cohort]) -> Cohort:
    return cohorts["alliance6"]
