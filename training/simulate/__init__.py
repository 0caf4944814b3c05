"""Literature-grounded synthetic cohorts: ``sessions`` and ``clients`` tables in contract form.

The generative process, in one paragraph (``docs/simulator.md`` has the full parameter table with
sources). Each client is seen by one therapist in one clinic. At intake the client has a latent
alliance level, a growth rate, an element-specific deviation per rated element, a no-show
propensity, a planned number of sessions and, for about one client in five, a later steady
*deterioration* of the alliance (onset session and rate). Appointment slots are then stepped
through for all clients at once: at each slot the client attends, no-shows, late-cancels, cancels
or reschedules; an attended session is rated (on the proportion-of-scale, then mapped onto the
instrument's scale, rounded and clipped); a rupture may start; and a client who has not yet
reached the planned length may decide to stop, with a per-slot dropout hazard that is
front-loaded in time and raised by low alliance (goal and task agreement more than bond), by how
far the alliance has fallen below the client's own early level, an unrepaired rupture, a no-show
(most early), age under 25, a high no-show propensity and the therapist. A client who decides to
stop usually misses one to three further booked appointments before the record ends. Episodes
still running at the extraction date are truncated there and labelled ``ongoing``; a short
enrolment window (``SimulationConfig.enrolment_days``) makes that censoring heavy, and
:func:`simulate_truth` gives the same episodes followed to their end, for measurement only.

The intercept of the hazard is solved for so that the share of dropouts among episodes that have
ended by extraction equals ``SimulationConfig.dropout_rate``: a pilot cohort is simulated with
common random numbers and a secant search (cached per configuration and instrument).

Every per-slot draw that can change the path of an episode (attendance, ruptures, repair, the
dropout decision) is made for all clients at once from one stream; draws that only change rating
values come from a second stream. So the dropout knob moves outcomes smoothly, and ratings never
change who drops out.

The package, one job per module:

* ``config``: :class:`SimulationConfig` (every parameter with its source), the :class:`Cohort`
  it produces and the progress callback type;
* ``intake``: the per-client quantities fixed at intake;
* ``paths``: stepping through appointment slots for all clients at once, and the outcome
  observed at extraction;
* ``intercept``: solving the hazard intercept for the target dropout rate (cached);
* ``tables``: assembling the contract tables, writing them and the simulation marker;
* ``drift``: the drift scenarios that change recorded ratings (a rating shift, an instrument
  change), for testing ``alliance-risk monitor``.
* ``trajectory``: how much the falling-alliance signal adds to discrimination on a cohort
  (the figures docs/simulator.md quotes).
"""

from __future__ import annotations

import logging

from features.profiles import InstrumentProfile, get_profile
from training.simulate.config import Cohort, ProgressFn, SimulationConfig
from training.simulate.drift import apply_rating_drift
from training.simulate.intercept import _solve_intercept as _solve_intercept
from training.simulate.intercept import dropout_intercept
from training.simulate.paths import _simulate_paths
from training.simulate.tables import SIMULATION_MARKER, _assemble, is_simulated, write_cohort

# Also re-exported, outside __all__: _solve_intercept, whose cache benchmarks/bench_simulate.py
# clears to time a cold calibration.
__all__ = [
    "SIMULATION_MARKER",
    "Cohort",
    "ProgressFn",
    "SimulationConfig",
    "dropout_intercept",
    "is_simulated",
    "simulate_cohort",
    "simulate_truth",
    "write_cohort",
]

logger = logging.getLogger(__name__)


def simulate_cohort(
    n_clients: int,
    *,
    seed: int,
    profile: InstrumentProfile | str = "alliance6",
    config: SimulationConfig | None = None,
    progress: ProgressFn | None = None,
) -> Cohort:
    """Simulate ``n_clients`` episodes of care in the contract's normalised form.

    Parameters
    ----------
    n_clients : int
        Number of clients (episodes), >= 1.
    seed : int
        Seed of ``numpy.random.SeedSequence``; the same seed gives identical frames.
    profile : InstrumentProfile or str
        Instrument the alliance ratings are recorded on (``alliance6``, ``srs``, ``wai_sr``).
    config : SimulationConfig, optional
        Generative parameters; defaults documented in ``docs/simulator.md``.
    progress : callable, optional
        Called as ``progress(stage, done, total)`` while calibrating and simulating.

    Returns
    -------
    Cohort
        ``sessions``, ``clients``, ``latent`` and ``ruptures`` frames (columns on
        :class:`Cohort`), the profile and the extraction date.

    Raises
    ------
    ValueError
        If ``n_clients < 1``.
    KeyError
        If ``profile`` names no known instrument profile.
    """
    if n_clients < 1:
        raise ValueError("n_clients must be at least 1")
    cfg = config or SimulationConfig()
    prof = get_profile(profile) if isinstance(profile, str) else profile
    elements = prof.element_names
    if progress is not None:
        progress("calibrating", 0, 1)
    intercept = dropout_intercept(cfg.without_drift(), prof)
    if progress is not None:
        progress("calibrating", 1, 1)
    paths = _simulate_paths(
        n_clients, seed, elements, cfg, intercept, record=True, progress=progress
    )
    if progress is not None:
        progress("assembling", 0, 1)
    cohort = apply_rating_drift(_assemble(paths, prof, cfg, intercept), cfg)
    if progress is not None:
        progress("assembling", 1, 1)
    logger.info(
        "simulated %d clients, %d sessions (profile %s)",
        len(cohort.clients),
        len(cohort.sessions),
        prof.name,
    )
    return cohort


def simulate_truth(
    n_clients: int,
    *,
    seed: int,
    profile: InstrumentProfile | str = "alliance6",
    config: SimulationConfig | None = None,
) -> Cohort:
    """The cohort :func:`simulate_cohort` gives for the same arguments, followed to the end.

    Same clients, intakes, appointments and ratings up to the extraction date; after it the
    appointments that the extract cut off, and every outcome as it eventually turned out
    (nothing ``ongoing``). The hazard intercept is the censored cohort's, so the two differ only
    in what has been observed. For measuring what censoring does to a model (the truth of the
    censored clients); never train on it.
    """
    cfg = config or SimulationConfig()
    prof = get_profile(profile) if isinstance(profile, str) else profile
    intercept = dropout_intercept(cfg.without_drift(), prof)
    return simulate_cohort(n_clients, seed=seed, profile=prof, config=cfg.fully_followed(intercept))
