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
still running at the extraction date are truncated there and labelled ``ongoing``.

The intercept of the hazard is solved for so that the share of dropouts among episodes that have
ended by extraction equals ``SimulationConfig.dropout_rate``: a pilot cohort is simulated with
common random numbers and a secant search (cached per configuration and instrument).

Every per-slot draw that can change the path of an episode (attendance, ruptures, repair, the
dropout decision) is made for all clients at once from one stream; draws that only change rating
values come from a second stream. So the dropout knob moves outcomes smoothly, and ratings never
change who drops out.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from features import contract as c
from features.profiles import InstrumentProfile, get_profile

logger = logging.getLogger(__name__)

#: Progress callback: (stage, done, total). Stages: "calibrating", "simulating", "assembling".
ProgressFn = Callable[[str, int, int], None]

# Attendance codes as small integers, in contract order.
_ATT, _NS, _LC, _CX, _RS = range(5)
#: File written next to a simulated cohort's tables; training labels such models as simulated.
SIMULATION_MARKER = "simulation.json"
_CODES = np.array(c.ATTENDANCE_CODES, dtype=object)
_OUTCOME_COMPLETED, _OUTCOME_DROPOUT = 0, 1


@dataclass(frozen=True)
class SimulationConfig:
    """Every parameter of the generative process, with its source or tuning target.

    Alliance quantities are on the *proportion-of-scale* ("p-scale", 0 = scale minimum,
    1 = scale maximum), so one set of numbers serves every instrument profile. Dropout
    quantities are log-odds of the per-slot dropout hazard. ``docs/simulator.md`` is the prose
    version of this table.
    """

    # --- Outcome ----------------------------------------------------------------------------
    # Share of dropouts among episodes ended by extraction. Swift & Greenberg 2012 meta-analysis:
    # weighted mean 19.7% across trials; routine care runs higher (25-40%, issue #2). Default 0.28.
    dropout_rate: float = 0.28
    # Fix the hazard intercept (log-odds) instead of solving for ``dropout_rate``; None = solve.
    dropout_intercept: float | None = None
    # Pilot cohort used to solve for the intercept; tuning constant (SE of the share ~0.6 points).
    calibration_clients: int = 20_000
    calibration_seed: int = 20_240_601

    # --- Cohort structure -------------------------------------------------------------------
    # Tuning constant: a therapist's caseload over the enrolment window (brief: ~25).
    clients_per_therapist: float = 25.0
    # Tuning constant (brief: 4 clinics).
    n_clinics: int = 4
    # Calendar: intakes uniform over [start_date, start_date + enrolment_days).
    start_date: date = date(2022, 1, 3)
    # Tuning constant: with a mean episode of ~3 months this leaves ~10% ongoing at extraction.
    enrolment_days: int = 900
    # Extraction happens this long after the last possible intake, so every client has a session.
    extraction_lag_days: int = 14
    # First therapy appointment 0..14 days after intake; tuning constant (typical booking delay).
    first_session_delay_max_days: int = 14

    # --- Demographics (fairness-audit covariates) -------------------------------------------
    # Age = 18 + Gamma(shape, scale): adult services, median ~34, ~20% under 25. Tuning constants.
    age_min: int = 18
    age_gamma_shape: float = 2.0
    age_gamma_scale: float = 9.0
    age_max: int = 85
    # Gender shares: about two thirds women, as in most adult outpatient services. Tuning constant;
    # gender has no effect on anything (issue #2: "Gender has no effect").
    genders: tuple[tuple[str, float], ...] = (
        ("female", 0.64),
        ("male", 0.33),
        ("non_binary", 0.03),
    )
    # Referral source shares; no effect on dropout. Tuning constant.
    referral_sources: tuple[tuple[str, float], ...] = (
        ("self", 0.40),
        ("gp", 0.40),
        ("secondary_care", 0.12),
        ("other", 0.08),
    )

    # --- Alliance trajectories (p-scale) ----------------------------------------------------
    # Mean intake level. Tuned with the growth below so SRS totals sit mostly at 36-40 with a
    # median ~36.5 (ceiling; Duncan et al. 2003 set the clinical cut-off at 36).
    alliance_intake_mean: float = 0.885
    # Early growth then plateau: level + growth * (1 - exp(-(k - 1) / tau)), k = attended count.
    # Shape: growth patterns in Kivlighan & Shaughnessy 2000 (early rise, then stable); sizes
    # are tuning constants (plateau ~0.05 above intake, mostly reached by session ~4).
    alliance_growth_mean: float = 0.05
    alliance_growth_sd: float = 0.03
    alliance_growth_tau: float = 1.5
    # Between-client SD of the alliance level. Tuning constant for d = 0.55 (Sharf et al. 2010).
    client_level_sd: float = 0.075
    # Between-therapist SD of the alliance level: therapists differ in the alliances they form
    # (Baldwin, Wampold & Imel 2007). Tuning: ~10% of the alliance-level variance.
    therapist_alliance_sd: float = 0.025
    # Between-client SD of each element's own deviation from the client's level. Tuning constant:
    # large enough that element-specific weights show (Webb et al. 2011).
    element_dev_sd: float = 0.04
    # Session-to-session noise: shared by all elements of one session, and per element. Tuning
    # constants: a client's own SD ~0.35 points on a 0-10 item before clipping.
    session_noise_sd: float = 0.03
    element_noise_sd: float = 0.02
    # Clients differ in their own variability: log-normal multiplier on the noise SDs (SD of log).
    noise_sd_spread: float = 0.3
    # Each element belongs to a facet: bond, goal, task or general (Bordin 1979; Webb et al.
    # 2011). Elements not listed are "general".
    element_facets: tuple[tuple[str, str], ...] = (
        ("empathy", "bond"),
        ("acceptance", "bond"),
        ("trust", "bond"),
        ("goals", "goal"),
        ("collaboration", "task"),
        ("communication", "general"),
        ("relationship", "bond"),
        ("approach", "task"),
        ("overall", "general"),
        ("goal", "goal"),
        ("task", "task"),
        ("bond", "bond"),
    )
    # Facet level offsets: elements must differ in level (issue #2); bond rated a little above
    # goal/task agreement is a modelling choice, not a cited norm. Tuning constants.
    facet_offsets: tuple[tuple[str, float], ...] = (
        ("bond", 0.02),
        ("goal", -0.015),
        ("task", -0.01),
        ("general", 0.0),
    )
    # Recording resolution per profile: alliance6 and SRS as a 0-10 line marked to 0.1 (the SRS
    # paper form is a 10 cm visual-analogue line, Duncan et al. 2003); WAI-SR subscale means of
    # four 1-5 items, i.e. steps of 0.25 (Hatcher & Gillaspy 2006). Others: 1% of the range.
    rating_steps: tuple[tuple[str, float], ...] = (
        ("alliance6", 0.1),
        ("srs", 0.1),
        ("wai_sr", 0.25),
    )
    # Share of attended sessions with no rating form returned (all elements missing). Tuning.
    unrated_share: float = 0.04

    # --- Dropout hazard (log-odds per appointment slot) -------------------------------------
    # Per SD of the latent alliance level (client + therapist). Tuned so early alliance gives
    # Cohen's d ~0.55 between completers and dropouts (Sharf, Primavera & Diener 2010: d = 0.55).
    level_weight: float = 0.52
    # Per SD of slower alliance growth. Tuning constant (small).
    growth_weight: float = 0.15
    # Per SD of an element's own deviation, by facet: goal and task agreement predict more than
    # bond (Webb et al. 2011 found this for symptom change; carried over to dropout as issue #2
    # asks). Tuning constants.
    facet_weights: tuple[tuple[str, float], ...] = (
        ("goal", 0.35),
        ("task", 0.25),
        ("bond", 0.0),
        ("general", 0.1),
    )
    # Therapist random effect on dropout (SD of log-odds). Therapists differ in dropout rates
    # beyond case mix (Saxon et al. 2017; Zimmermann et al. 2017). Tuning constant.
    therapist_dropout_sd: float = 0.45
    # Younger clients drop out more (Swift & Greenberg 2012, age moderator); size is tuning.
    young_age: int = 25
    young_log_odds: float = 0.45
    # Per SD of the client's no-show propensity. Tuning constant.
    noshow_propensity_weight: float = 0.3
    # Front-loaded timing: front_load * exp(-(slot - 1) / front_load_tau) added to the hazard.
    # Tuned so about half of dropouts leave by session 3 (Swift & Greenberg 2012 on early
    # dropout; issue #2).
    front_load: float = 1.8
    front_load_tau: float = 1.6
    # The appointment at this slot changes the hazard of deciding to stop right after it.
    # Early no-shows sharply raise dropout, cancellations much less (issue #2). Tuning constants.
    hazard_no_show: float = 0.9
    hazard_no_show_early: float = 0.8
    early_slots: int = 3
    hazard_late_cancel: float = 0.5
    hazard_cancelled: float = 0.1
    # An unrepaired rupture raises the hazard from its onset; a repaired one leaves it alone
    # (Safran, Muran & Eubanks-Carter 2011: rupture repair goes with good outcome). Tuning.
    hazard_unrepaired_rupture: float = 1.2
    # After deciding to stop, the client misses 0, 1, 2 or 3 more booked appointments before the
    # clinic closes the record (issue #2: "usually 1-3 missed"). Tuning constants.
    terminal_miss_probs: tuple[float, float, float, float] = (0.12, 0.40, 0.33, 0.15)
    # Share of those terminal misses that are late cancellations rather than no-shows. Tuning.
    terminal_late_cancel_share: float = 0.3
    # A dropout is recorded when the clinic closes the episode, this many days after the last
    # booked appointment; until then it is "ongoing". Administrative convention; tuning.
    closure_days: int = 28
    # Planned length in attended sessions: log-normal, median 12, clipped to [4, 30]. Routine
    # courses of 6-20 sessions; tuning constant.
    planned_sessions_median: float = 12.0
    planned_sessions_log_sd: float = 0.35
    planned_sessions_min: int = 4
    planned_sessions_max: int = 30
    # Safety cap on booked slots per episode; an episode still running there ends as completed.
    max_slots: int = 120
    # Log-odds per between-client SD of the alliance level (hypot(client_level_sd,
    # therapist_alliance_sd) = 0.079 p) by which the *current* latent alliance has fallen below
    # the client's own early level (the deterioration process below; 0 for everyone else). A
    # weak or *falling* alliance predicts unilateral termination (product brief; the level
    # effect is Sharf et al. 2010). Tuning constant: on 20,000-client cohorts trajectory
    # features add ~0.05 (target >= 0.02) test AUROC to a logistic regression on early alliance
    # and attendance at the training landmarks (docs/simulator.md).
    hazard_decline: float = 1.2

    # --- Alliance deterioration (time-varying, p-scale) ------------------------------------
    # Individual alliance trajectories differ in shape rather than sharing one curve
    # (Kivlighan & Shaughnessy 2000: stable, linear-growth and quadratic patterns; Stiles et al.
    # 2004: V-shaped rupture-repair deflections in some clients). Here a share of clients start
    # ordinarily and then drift away: a slow, unrepaired disengagement, the gradual counterpart
    # of a withdrawal rupture (Safran & Muran 2000), as opposed to the sudden, often repaired
    # drops of the rupture process below. No source gives the share, onset or rate of such
    # declines: all deterioration sizes are tuning constants (~1 client in 5).
    decline_share: float = 0.22
    # The decline starts after attended session ``onset`` (uniform onset_min..onset_max), so the
    # first lower rating is at attended session onset + 1 and the early alliance (sessions 1-3)
    # is untouched. Tuning constants.
    decline_onset_min: int = 3
    decline_onset_max: int = 10
    # Client-specific rate per attended session, uniform: 0.2-0.5 points on a 0-10 item. The
    # cumulative decline is capped (2 points on 0-10). Tuning constants. With the facet
    # multipliers below one step is at most 0.06 p, below the shallowest rupture (2 own SDs,
    # ~0.072 p for a client of average variability): a decline is a slope, not a drop.
    decline_rate_min: float = 0.02
    decline_rate_max: float = 0.05
    decline_max: float = 0.20
    # Facet multipliers of the decline in the ratings: goal and task agreement erode more than
    # the bond (in line with Webb et al. 2011 giving goal/task agreement the larger role); a
    # modelling choice. Close to 1 on average over each profile's elements.
    decline_facet_multipliers: tuple[tuple[str, float], ...] = (
        ("goal", 1.2),
        ("task", 1.1),
        ("bond", 0.8),
        ("general", 1.0),
    )

    # --- Attendance (per booked slot, while in treatment) -----------------------------------
    # Shares attended, no_show, late_cancel, cancelled, rescheduled for an average client. Tuned
    # so all slots, including dropouts' terminal misses, give ~0.80/0.10/0.05/0.05/small
    # (issue #2: 75-85% attended, ~10% no-show, ~5% late cancel, ~5% cancelled).
    attendance_probs: tuple[float, float, float, float, float] = (0.832, 0.068, 0.036, 0.049, 0.015)
    # Between-client SD of the no-show log-odds (clients differ in attendance). Tuning constant.
    noshow_propensity_sd: float = 0.7
    # Late cancellations share part of the no-show propensity (same log-odds, times this).
    late_cancel_propensity_share: float = 0.5

    # --- Ruptures -------------------------------------------------------------------------
    # Per attended session from the second, probability a rupture starts (none already open).
    # Only ruptures large enough to show as a >= 2 SD fall are simulated; self-reported strains
    # are more common (Safran, Muran & Eubanks-Carter 2011). Tuning: ~30% of clients have one.
    rupture_rate: float = 0.04
    # Depth, in SDs of the client's own session-to-session variability (issue #2: >= 1-2 SD).
    rupture_depth_min_sd: float = 2.0
    rupture_depth_max_sd: float = 3.5
    # Each element is hit with this probability (at least one is always hit).
    rupture_element_share: float = 0.5
    # About 60% are repaired within 1-3 sessions (issue #2; Safran et al. 2011 on repair).
    repair_probability: float = 0.6
    repair_lag_max_sessions: int = 3

    # --- Session dates --------------------------------------------------------------------
    # Weekly appointments with +/- 2 days jitter; a week skipped now and then (holidays,
    # therapist leave); misses push the next booking later; a rescheduled slot is replaced a few
    # days later. Tuning constants.
    interval_days: int = 7
    interval_jitter_days: int = 2
    skipped_week_prob: float = 0.08
    gap_after_miss_max_days: int = 7
    reschedule_gap_max_days: int = 5

    def __post_init__(self) -> None:
        if not 0.02 <= self.dropout_rate <= 0.8:
            raise ValueError("dropout_rate must be between 0.02 and 0.8")
        if abs(sum(self.attendance_probs) - 1.0) > 1e-6:
            raise ValueError("attendance_probs must sum to 1")
        if abs(sum(self.terminal_miss_probs) - 1.0) > 1e-6:
            raise ValueError("terminal_miss_probs must sum to 1")
        if not 0.0 <= self.repair_probability <= 1.0:
            raise ValueError("repair_probability must be between 0 and 1")
        if self.clients_per_therapist <= 0 or self.n_clinics < 1:
            raise ValueError("clients_per_therapist must be > 0 and n_clinics >= 1")
        if self.planned_sessions_min < 1 or self.planned_sessions_max < self.planned_sessions_min:
            raise ValueError("planned_sessions_min must be >= 1 and <= planned_sessions_max")
        if not 0.0 <= self.decline_share <= 1.0:
            raise ValueError("decline_share must be between 0 and 1")
        if self.decline_onset_min < 1 or self.decline_onset_max < self.decline_onset_min:
            raise ValueError("decline_onset_min must be >= 1 and <= decline_onset_max")
        if not 0.0 <= self.decline_rate_min <= self.decline_rate_max or self.decline_max < 0:
            raise ValueError("decline rates must satisfy 0 <= min <= max and decline_max >= 0")

    @property
    def extraction_date(self) -> date:
        """The data extraction date: episodes running then are truncated and ``ongoing``."""
        return self.start_date + timedelta(days=self.enrolment_days + self.extraction_lag_days)

    def facet(self, element: str) -> str:
        """The facet (bond, goal, task, general) an element name belongs to."""
        return dict(self.element_facets).get(element, "general")

    def rating_step(self, profile: InstrumentProfile) -> float:
        """Recording resolution of ``profile``'s ratings, on its own scale."""
        return dict(self.rating_steps).get(profile.name, profile.scale_range / 100.0)


@dataclass(frozen=True)
class Cohort:
    """A simulated cohort.

    Attributes
    ----------
    sessions : pandas.DataFrame
        One row per booked appointment, contract form: ``client_id``, ``clinic_id``,
        ``therapist_id`` (str), ``session_number`` (int64, 1..n per client),
        ``session_date`` (datetime64, midnight), ``attendance`` (contract code), then
        ``alliance_<element>`` (float64 on the profile's scale, NaN unless attended and rated).
    clients : pandas.DataFrame
        One row per episode: ``client_id``, ``clinic_id``, ``therapist_id``, ``intake_date``,
        ``age`` (int64, years), ``gender``, ``referral_source``, ``outcome``.
    latent : pandas.DataFrame
        One row per client with the true generative quantities (see ``docs/simulator.md``).
    ruptures : pandas.DataFrame
        One row per rupture event (see ``docs/simulator.md``).
    profile : InstrumentProfile
        The instrument the ratings are on.
    extraction_date : pandas.Timestamp
        Records are truncated at this date; episodes running then are ``ongoing``.
    """

    sessions: pd.DataFrame
    clients: pd.DataFrame
    latent: pd.DataFrame
    ruptures: pd.DataFrame
    profile: InstrumentProfile
    extraction_date: pd.Timestamp


@dataclass(frozen=True)
class _Static:
    """Per-client quantities fixed at intake (arrays of length n)."""

    therapist: np.ndarray
    clinic: np.ndarray
    intake_day: np.ndarray
    first_day: np.ndarray
    age: np.ndarray
    gender: np.ndarray
    referral: np.ndarray
    level: np.ndarray
    growth: np.ndarray
    dev: np.ndarray
    noise_mult: np.ndarray
    noshow: np.ndarray
    planned: np.ndarray
    eta: np.ndarray
    mean_pe: np.ndarray
    attend_cum: np.ndarray
    therapist_alliance: np.ndarray
    therapist_dropout: np.ndarray
    weights: np.ndarray
    declines: np.ndarray
    decline_onset: np.ndarray
    decline_rate: np.ndarray
    decline_mult: np.ndarray


@dataclass(frozen=True)
class _Paths:
    """Everything the slot loop produces (rows only when recording)."""

    static: _Static
    outcome: np.ndarray
    decision_slot: np.ndarray
    last_attended: np.ndarray
    n_attended: np.ndarray
    end_day: np.ndarray
    n_slots: np.ndarray
    terminal_misses: np.ndarray
    row_client: np.ndarray
    row_slot: np.ndarray
    row_day: np.ndarray
    row_code: np.ndarray
    row_ratings: np.ndarray
    ruptures: dict[str, np.ndarray]


def _facet_array(config: SimulationConfig, elements: tuple[str, ...], table: str) -> np.ndarray:
    values = dict(getattr(config, table))
    return np.array([values.get(config.facet(e), 0.0) for e in elements], dtype=np.float64)


def _draw_static(
    n: int, elements: tuple[str, ...], config: SimulationConfig, rng: np.random.Generator
) -> _Static:
    """Intake-time quantities for ``n`` clients; ``eta`` excludes the intercept."""
    cfg = config
    n_el = len(elements)
    n_ther = max(1, round(n / cfg.clients_per_therapist))
    ther_clinic = np.arange(n_ther) % cfg.n_clinics
    therapist = rng.integers(0, n_ther, size=n)
    clinic = ther_clinic[therapist]
    ther_alliance = rng.normal(0.0, cfg.therapist_alliance_sd, size=n_ther)
    ther_dropout = rng.normal(0.0, cfg.therapist_dropout_sd, size=n_ther)

    intake_day = rng.integers(0, cfg.enrolment_days, size=n)
    first_day = intake_day + rng.integers(0, cfg.first_session_delay_max_days + 1, size=n)
    age = np.minimum(
        cfg.age_min + rng.gamma(cfg.age_gamma_shape, cfg.age_gamma_scale, size=n), cfg.age_max
    ).astype(np.int64)
    g_p = np.array([p for _, p in cfg.genders])
    gender = rng.choice(len(g_p), size=n, p=g_p / g_p.sum())
    r_p = np.array([p for _, p in cfg.referral_sources])
    referral = rng.choice(len(r_p), size=n, p=r_p / r_p.sum())

    client_level = rng.normal(0.0, cfg.client_level_sd, size=n)
    level = client_level + ther_alliance[therapist]
    z_growth = rng.standard_normal(n)
    growth = cfg.alliance_growth_mean + cfg.alliance_growth_sd * z_growth
    z_dev = rng.standard_normal((n, n_el))
    dev = cfg.element_dev_sd * z_dev
    noise_mult = np.exp(cfg.noise_sd_spread * rng.standard_normal(n) - cfg.noise_sd_spread**2 / 2)
    z_noshow = rng.standard_normal(n)
    noshow = cfg.noshow_propensity_sd * z_noshow
    planned = np.clip(
        np.rint(
            cfg.planned_sessions_median
            * np.exp(cfg.planned_sessions_log_sd * rng.standard_normal(n))
        ),
        cfg.planned_sessions_min,
        cfg.planned_sessions_max,
    ).astype(np.int64)
    # Drawn after everything else so the other intake quantities do not depend on them.
    declines = rng.random(n) < cfg.decline_share
    decline_onset = rng.integers(cfg.decline_onset_min, cfg.decline_onset_max + 1, size=n)
    decline_rate = rng.uniform(cfg.decline_rate_min, cfg.decline_rate_max, size=n) * declines

    weights = _facet_array(cfg, elements, "facet_weights")
    level_sd = math.hypot(cfg.client_level_sd, cfg.therapist_alliance_sd)
    eta = (
        -cfg.level_weight * level / level_sd
        - z_dev @ weights
        - cfg.growth_weight * z_growth
        + ther_dropout[therapist]
        + cfg.young_log_odds * (age < cfg.young_age)
        + cfg.noshow_propensity_weight * z_noshow
    )
    offsets = _facet_array(cfg, elements, "facet_offsets")
    mean_pe = cfg.alliance_intake_mean + offsets[None, :] + level[:, None] + dev

    # Multinomial attendance per client: no-show (and partly late-cancel) log-odds shifted by
    # the client's propensity, renormalised.
    base = np.log(np.asarray(cfg.attendance_probs, dtype=np.float64))
    logits = np.broadcast_to(base, (n, 5)).copy()
    logits[:, _NS] += noshow
    logits[:, _LC] += cfg.late_cancel_propensity_share * noshow
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    attend_cum = np.cumsum(probs, axis=1)
    attend_cum[:, -1] = 1.0

    return _Static(
        therapist=therapist,
        clinic=clinic,
        intake_day=intake_day,
        first_day=first_day,
        age=age,
        gender=gender,
        referral=referral,
        level=level,
        growth=growth,
        dev=dev,
        noise_mult=noise_mult,
        noshow=noshow,
        planned=planned,
        eta=eta,
        mean_pe=mean_pe,
        attend_cum=attend_cum,
        therapist_alliance=ther_alliance,
        therapist_dropout=ther_dropout,
        weights=weights,
        declines=declines,
        decline_onset=decline_onset,
        decline_rate=decline_rate,
        decline_mult=_facet_array(cfg, elements, "decline_facet_multipliers"),
    )


def _decline(st: _Static, idx: np.ndarray, attended: np.ndarray, cap: float) -> np.ndarray:
    """Latent fall below the early level (p-scale) of clients ``idx`` after ``attended`` sessions."""
    return np.minimum(st.decline_rate[idx] * np.maximum(attended - st.decline_onset[idx], 0), cap)


def _simulate_paths(
    n: int,
    seed: int,
    elements: tuple[str, ...],
    config: SimulationConfig,
    intercept: float,
    *,
    record: bool,
    progress: ProgressFn | None = None,
) -> _Paths:
    """Step through booked slots for all clients at once; rows and ratings only if ``record``."""
    cfg = config
    static_ss, path_ss, obs_ss = np.random.SeedSequence(seed).spawn(3)
    st = _draw_static(n, elements, cfg, np.random.default_rng(static_ss))
    path_rng = np.random.default_rng(path_ss)
    obs_rng = np.random.default_rng(obs_ss)
    n_el = len(elements)

    phase = np.zeros(n, dtype=np.int8)  # 0 in treatment, 1 leaving, 2 ended
    attended = np.zeros(n, dtype=np.int64)
    misses_left = np.zeros(n, dtype=np.int64)
    day = st.first_day.copy()
    last_code = np.full(n, _ATT, dtype=np.int64)
    outcome = np.full(n, -1, dtype=np.int8)
    decision_slot = np.zeros(n, dtype=np.int64)
    last_attended = np.zeros(n, dtype=np.int64)
    end_day = np.zeros(n, dtype=np.int64)
    n_slots = np.zeros(n, dtype=np.int64)
    terminal = np.zeros(n, dtype=np.int64)
    rupture_open = np.zeros(n, dtype=np.int8)  # 0 none, 1 to be repaired, 2 unrepaired
    repair_at = np.zeros(n, dtype=np.int64)
    rupture_row = np.full(n, -1, dtype=np.int64)
    offset = np.zeros((n, n_el)) if record else np.zeros((0, n_el))
    own_sd = st.noise_mult * math.hypot(cfg.session_noise_sd, cfg.element_noise_sd)
    term_cum = np.cumsum(cfg.terminal_miss_probs)
    term_cum[-1] = 1.0
    decline_per_sd = cfg.hazard_decline / math.hypot(cfg.client_level_sd, cfg.therapist_alliance_sd)

    rows_client: list[np.ndarray] = []
    rows_slot: list[np.ndarray] = []
    rows_day: list[np.ndarray] = []
    rows_code: list[np.ndarray] = []
    rows_ratings: list[np.ndarray] = []
    rup: dict[str, list[int | float]] = {
        k: [] for k in ("client", "slot", "attended_index", "mask", "depth_sd", "repaired", "lag")
    }
    rup_masks: list[np.ndarray] = []
    rup_repaired_slot: list[int] = []

    for slot in range(1, cfg.max_slots + 1):
        active = np.flatnonzero(phase < 2)
        if active.size == 0:
            break
        # Path draws for every client, used or not: common random numbers across intercepts.
        u_att = path_rng.random(n)[active]
        u_haz = path_rng.random(n)[active]
        u_rupt = path_rng.random(n)[active]
        u_rep = path_rng.random(n)[active]
        u_term = path_rng.random(n)[active]
        u_lag = path_rng.random(n)[active]
        u_gap = path_rng.random((n, 3))[active]

        if slot > 1:
            prev = last_code[active]
            gap = cfg.interval_days + np.floor(
                u_gap[:, 0] * (2 * cfg.interval_jitter_days + 1) - cfg.interval_jitter_days
            ).astype(np.int64)
            gap += cfg.interval_days * (u_gap[:, 1] < cfg.skipped_week_prob)
            missed = (prev == _NS) | (prev == _LC) | (prev == _CX)
            gap += missed * np.floor(u_gap[:, 2] * (cfg.gap_after_miss_max_days + 1)).astype(
                np.int64
            )
            resched = 1 + np.floor(u_gap[:, 2] * cfg.reschedule_gap_max_days).astype(np.int64)
            gap = np.where(prev == _RS, resched, np.maximum(gap, 1))
            day[active] += gap

        ph = phase[active]
        treating = ph == 0
        code = (u_att[:, None] > st.attend_cum[active]).sum(axis=1)
        leaving = ~treating
        code[leaving] = np.where(u_att[leaving] < cfg.terminal_late_cancel_share, _LC, _NS)

        is_att = treating & (code == _ATT)
        att_idx = active[is_att]
        attended[att_idx] += 1
        last_attended[att_idx] = slot
        k = attended[att_idx]

        # Repairs due at this session take effect before it is rated.
        due = att_idx[(rupture_open[att_idx] == 1) & (repair_at[att_idx] <= k)]
        rupture_open[due] = 0
        if record and due.size:
            offset[due] = 0.0
            for r in rupture_row[due]:
                rup_repaired_slot[r] = slot
        # New ruptures from the second attended session, one open at a time.
        onset_mask = (k >= 2) & (rupture_open[att_idx] == 0) & (u_rupt[is_att] < cfg.rupture_rate)
        onset = att_idx[onset_mask]
        if onset.size:
            repaired = u_rep[is_att][onset_mask] < cfg.repair_probability
            lag = 1 + np.floor(u_lag[is_att][onset_mask] * cfg.repair_lag_max_sessions).astype(
                np.int64
            )
            rupture_open[onset] = np.where(repaired, 1, 2)
            repair_at[onset] = attended[onset] + lag
            if record:
                hit = obs_rng.random((onset.size, n_el)) < cfg.rupture_element_share
                hit[np.arange(onset.size), obs_rng.integers(0, n_el, onset.size)] = True
                depth_sd = obs_rng.uniform(
                    cfg.rupture_depth_min_sd, cfg.rupture_depth_max_sd, onset.size
                )
                offset[onset] = -(hit * (depth_sd * own_sd[onset])[:, None])
                start = len(rup_repaired_slot)
                rupture_row[onset] = np.arange(start, start + onset.size)
                rup["client"].extend(onset.tolist())
                rup["slot"].extend([slot] * onset.size)
                rup["attended_index"].extend(attended[onset].tolist())
                rup["depth_sd"].extend(depth_sd.tolist())
                rup["repaired"].extend(repaired.tolist())
                rup["lag"].extend(lag.tolist())
                rup_masks.append(hit)
                rup_repaired_slot.extend([-1] * onset.size)

        if record:
            ratings = np.full((active.size, n_el), np.nan)
            growth_term = st.growth[att_idx] * (1.0 - np.exp(-(k - 1) / cfg.alliance_growth_tau))
            noise = cfg.session_noise_sd * obs_rng.standard_normal((att_idx.size, 1))
            noise = noise + cfg.element_noise_sd * obs_rng.standard_normal((att_idx.size, n_el))
            fall = _decline(st, att_idx, k, cfg.decline_max)
            p = (
                st.mean_pe[att_idx]
                + growth_term[:, None]
                - fall[:, None] * st.decline_mult[None, :]
                + offset[att_idx]
                + st.noise_mult[att_idx, None] * noise
            )
            unrated = obs_rng.random(att_idx.size) < cfg.unrated_share
            p[unrated] = np.nan
            ratings[is_att] = p
            rows_client.append(active.astype(np.int32))
            rows_slot.append(np.full(active.size, slot, dtype=np.int16))
            rows_day.append(day[active].astype(np.int32))
            rows_code.append(code.astype(np.int8))
            rows_ratings.append(ratings)
        last_code[active] = code
        n_slots[active] = slot
        end_day[active] = day[active]

        # Leaving clients: one fewer booked appointment to miss.
        lv = active[leaving]
        misses_left[lv] -= 1
        gone = lv[misses_left[lv] <= 0]
        phase[gone] = 2
        outcome[gone] = _OUTCOME_DROPOUT

        # Completion at the planned length.
        done = att_idx[attended[att_idx] >= st.planned[att_idx]]
        phase[done] = 2
        outcome[done] = _OUTCOME_COMPLETED

        # Dropout decision for clients still in treatment after this slot.
        still = treating & (phase[active] == 0)
        idx = active[still]
        c_still = code[still]
        logit = (
            intercept
            + st.eta[idx]
            + cfg.front_load * math.exp(-(slot - 1) / cfg.front_load_tau)
            + cfg.hazard_no_show * (c_still == _NS)
            + cfg.hazard_no_show_early * ((c_still == _NS) & (slot <= cfg.early_slots))
            + cfg.hazard_late_cancel * (c_still == _LC)
            + cfg.hazard_cancelled * (c_still == _CX)
            + cfg.hazard_unrepaired_rupture * (rupture_open[idx] == 2)
            + decline_per_sd * _decline(st, idx, attended[idx], cfg.decline_max)
        )
        quit_ = u_haz[still] < 1.0 / (1.0 + np.exp(-logit))
        q_idx = idx[quit_]
        n_term = (u_term[still][quit_][:, None] > term_cum[None, :-1]).sum(axis=1)
        decision_slot[q_idx] = slot
        terminal[q_idx] = n_term
        misses_left[q_idx] = n_term
        phase[q_idx] = np.where(n_term > 0, 1, 2).astype(np.int8)
        outcome[q_idx[n_term == 0]] = _OUTCOME_DROPOUT
        if progress is not None:
            progress("simulating", int((phase == 2).sum()), n)

    # Safety cap: anything still running ends as it stands.
    running = phase < 2
    outcome[running & (phase == 1)] = _OUTCOME_DROPOUT
    outcome[running & (phase == 0)] = _OUTCOME_COMPLETED

    def _cat(parts: list[np.ndarray], dtype: type, width: int | None = None) -> np.ndarray:
        if parts:
            return np.concatenate(parts)
        return np.zeros((0,) if width is None else (0, width), dtype=dtype)

    return _Paths(
        static=st,
        outcome=outcome,
        decision_slot=decision_slot,
        last_attended=last_attended,
        n_attended=attended,
        end_day=end_day,
        n_slots=n_slots,
        terminal_misses=terminal,
        row_client=_cat(rows_client, np.int32),
        row_slot=_cat(rows_slot, np.int16),
        row_day=_cat(rows_day, np.int32),
        row_code=_cat(rows_code, np.int8),
        row_ratings=_cat(rows_ratings, np.float64, n_el),
        ruptures={
            "client": np.asarray(rup["client"], dtype=np.int64),
            "slot": np.asarray(rup["slot"], dtype=np.int64),
            "attended_index": np.asarray(rup["attended_index"], dtype=np.int64),
            "depth_sd": np.asarray(rup["depth_sd"], dtype=np.float64),
            "repaired": np.asarray(rup["repaired"], dtype=bool),
            "lag": np.asarray(rup["lag"], dtype=np.int64),
            "hit": np.concatenate(rup_masks) if rup_masks else np.zeros((0, n_el), dtype=bool),
            "repaired_slot": np.asarray(rup_repaired_slot, dtype=np.int64),
        },
    )


def _observed_outcome(paths: _Paths, config: SimulationConfig) -> np.ndarray:
    """Outcome known at extraction: 0 completed, 1 dropout, 2 ongoing (day numbers from start)."""
    extraction = config.enrolment_days + config.extraction_lag_days
    ended = np.where(
        paths.outcome == _OUTCOME_DROPOUT,
        paths.end_day + config.closure_days <= extraction,
        paths.end_day <= extraction,
    )
    return np.where(ended, paths.outcome, 2).astype(np.int8)


def _ended_dropout_share(paths: _Paths, config: SimulationConfig) -> float:
    obs = _observed_outcome(paths, config)
    ended = obs < 2
    return float((obs[ended] == _OUTCOME_DROPOUT).mean()) if ended.any() else 0.0


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


@functools.lru_cache(maxsize=32)
def _solve_intercept(config: SimulationConfig, elements: tuple[str, ...]) -> float:
    """Hazard intercept giving ``config.dropout_rate`` among ended episodes (secant on logits)."""
    target = _logit(config.dropout_rate)

    def gap(alpha: float) -> float:
        paths = _simulate_paths(
            config.calibration_clients,
            config.calibration_seed,
            elements,
            config,
            alpha,
            record=False,
        )
        return _logit(_ended_dropout_share(paths, config)) - target

    # Starting point: the intercept that gives the default rate, shifted on the logit scale.
    a0 = -5.1 + (target - _logit(0.28))
    g0 = gap(a0)
    a1 = a0 - g0
    g1 = gap(a1)
    best = min((abs(g0), a0), (abs(g1), a1))
    for _ in range(6):
        if abs(g1) < 0.01 or g1 == g0:
            break
        slope = min(max((g1 - g0) / (a1 - a0), 0.3), 3.0)
        a0, g0 = a1, g1
        a1 = a1 - g1 / slope
        g1 = gap(a1)
        best = min(best, (abs(g1), a1))
    logger.debug("dropout intercept %.4f (logit gap %.4f)", best[1], best[0])
    return best[1]


def dropout_intercept(
    config: SimulationConfig, profile: InstrumentProfile | str = "alliance6"
) -> float:
    """The per-slot dropout log-odds intercept used for ``config`` and ``profile``.

    ``config.dropout_intercept`` if set, else solved on a pilot cohort so that the share of
    dropouts among episodes ended by extraction equals ``config.dropout_rate``. Cached.
    """
    if config.dropout_intercept is not None:
        return config.dropout_intercept
    prof = get_profile(profile) if isinstance(profile, str) else profile
    # The rate target is matched whatever the intercept override says, so drop it from the key.
    return _solve_intercept(replace(config, dropout_intercept=None), prof.element_names)


def _ids(prefix: str, n: int, width: int) -> np.ndarray:
    width = max(width, len(str(n)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)], dtype=object)


def _to_scale(p: np.ndarray, profile: InstrumentProfile, step: float) -> np.ndarray:
    """Map p-scale values onto the instrument, clip, round to its recording step."""
    x = np.clip(p, 0.0, 1.0)
    x *= profile.scale_range / step
    np.round(x, out=x)
    x *= step
    x += profile.scale_min
    # Round again so 9.700000000000001 is written as 9.7.
    np.round(x, max(0, -math.floor(math.log10(step)) + 1), out=x)
    return np.clip(x, profile.scale_min, profile.scale_max, out=x)


def _str_col(values: np.ndarray) -> pd.Series:
    return pd.Series(values, dtype="str")


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
    intercept = dropout_intercept(cfg, prof)
    if progress is not None:
        progress("calibrating", 1, 1)
    paths = _simulate_paths(
        n_clients, seed, elements, cfg, intercept, record=True, progress=progress
    )
    if progress is not None:
        progress("assembling", 0, 1)
    cohort = _assemble(paths, prof, cfg, intercept)
    if progress is not None:
        progress("assembling", 1, 1)
    logger.info(
        "simulated %d clients, %d sessions (profile %s)",
        len(cohort.clients),
        len(cohort.sessions),
        prof.name,
    )
    return cohort


def _assemble(
    paths: _Paths, profile: InstrumentProfile, config: SimulationConfig, intercept: float
) -> Cohort:
    """Build the four frames from the slot loop's arrays, applying censoring at extraction."""
    st = paths.static
    n = st.planned.size
    start = np.datetime64(config.start_date, "D")
    extraction = config.enrolment_days + config.extraction_lag_days
    observed = _observed_outcome(paths, config)

    client_ids = _ids("C", n, 6)
    n_ther = st.therapist_alliance.size
    ther_ids = _ids("T", n_ther, 3)
    clinic_ids = _ids("K", config.n_clinics, 2)

    keep = np.flatnonzero(paths.row_day <= extraction)
    sel = keep[np.lexsort((paths.row_slot[keep], paths.row_client[keep]))]
    r_client = paths.row_client[sel]
    r_day = paths.row_day[sel]
    values = _to_scale(paths.row_ratings[sel], profile, config.rating_step(profile))

    sessions = pd.DataFrame(
        {
            c.CLIENT_ID: _str_col(client_ids[r_client]),
            c.CLINIC_ID: _str_col(clinic_ids[st.clinic[r_client]]),
            c.THERAPIST_ID: _str_col(ther_ids[st.therapist[r_client]]),
            c.SESSION_NUMBER: paths.row_slot[sel].astype(np.int64),
            c.SESSION_DATE: pd.Series(start + r_day.astype("timedelta64[D]")).astype(
                "datetime64[s]"
            ),
            c.ATTENDANCE: _str_col(_CODES[paths.row_code[sel]]),
        }
    )
    for j, col in enumerate(profile.columns):
        sessions[col] = values[:, j]

    outcome_codes = np.array([c.COMPLETED, c.DROPOUT, c.ONGOING], dtype=object)
    genders = np.array([g for g, _ in config.genders], dtype=object)
    referrals = np.array([r for r, _ in config.referral_sources], dtype=object)
    clients = pd.DataFrame(
        {
            c.CLIENT_ID: _str_col(client_ids),
            c.CLINIC_ID: _str_col(clinic_ids[st.clinic]),
            c.THERAPIST_ID: _str_col(ther_ids[st.therapist]),
            c.INTAKE_DATE: pd.Series(start + st.intake_day.astype("timedelta64[D]")).astype(
                "datetime64[s]"
            ),
            c.AGE: st.age.astype(np.int64),
            c.GENDER: _str_col(genders[st.gender]),
            c.REFERRAL_SOURCE: _str_col(referrals[st.referral]),
            c.OUTCOME: _str_col(outcome_codes[observed]),
        }
    )

    dropped = paths.outcome == _OUTCOME_DROPOUT
    rup = paths.ruptures
    rup_client = rup["client"]
    latent_cols: dict[str, object] = {
        c.CLIENT_ID: _str_col(client_ids),
        "therapist_alliance_effect": st.therapist_alliance[st.therapist],
        "therapist_dropout_effect": st.therapist_dropout[st.therapist],
        "alliance_level": st.level,
        "alliance_intake_mean": st.mean_pe.mean(axis=1),
        "alliance_growth": st.growth,
    }
    for j, e in enumerate(profile.element_names):
        latent_cols[f"element_dev_{e}"] = st.dev[:, j]
    for j, e in enumerate(profile.element_names):
        latent_cols[f"element_weight_{e}"] = np.full(n, st.weights[j])
    latent_cols.update(
        {
            "rating_noise_sd": st.noise_mult
            * math.hypot(config.session_noise_sd, config.element_noise_sd),
            "noshow_propensity": st.noshow,
            "planned_sessions": st.planned,
            "intake_logit": intercept + st.eta,
            "eventual_outcome": _str_col(outcome_codes[paths.outcome]),
            "dropout_session": pd.Series(paths.decision_slot, dtype="Int64").where(dropped),
            "terminal_misses": pd.Series(paths.terminal_misses, dtype="Int64").where(dropped),
            "last_attended_session": paths.last_attended,
            "declines": st.declines,
            "decline_onset": pd.Series(st.decline_onset, dtype="Int64").where(st.declines),
            "decline_rate": np.where(st.declines, st.decline_rate, np.nan),
            "decline_final": _decline(st, np.arange(n), paths.n_attended, config.decline_max),
            "n_ruptures": np.bincount(rup_client, minlength=n),
            "n_ruptures_repaired": np.bincount(rup_client[rup["repaired"]], minlength=n),
            "censored": observed == 2,
        }
    )
    latent = pd.DataFrame(latent_cols)

    element_names = np.array(profile.element_names, dtype=object)
    hit = rup["hit"]
    hit_names = ["|".join(element_names[h]) for h in hit]
    repaired_slot = rup["repaired_slot"]
    ruptures = pd.DataFrame(
        {
            c.CLIENT_ID: _str_col(client_ids[rup_client]),
            "onset_session": rup["slot"],
            "onset_attended_index": rup["attended_index"],
            "elements": pd.Series(hit_names, dtype="str"),
            "n_elements": hit.sum(axis=1).astype(np.int64),
            "depth_sd": rup["depth_sd"],
            "depth": rup["depth_sd"]
            * latent["rating_noise_sd"].to_numpy()[rup_client]
            * profile.scale_range,
            "repaired": rup["repaired"],
            "repair_lag_sessions": rup["lag"],
            "repaired_session": pd.Series(repaired_slot, dtype="Int64").where(repaired_slot > 0),
        }
    )
    ruptures = ruptures.sort_values([c.CLIENT_ID, "onset_session"], ignore_index=True)

    return Cohort(
        sessions=sessions,
        clients=clients,
        latent=latent,
        ruptures=ruptures,
        profile=profile,
        extraction_date=pd.Timestamp(config.extraction_date),
    )


def write_cohort(
    cohort: Cohort,
    out_dir: str | Path,
    *,
    fmt: Literal["csv", "parquet"] = "csv",
    with_latent: bool = False,
) -> dict[str, Path]:
    """Write the cohort's tables to ``out_dir`` (created if needed).

    Parameters
    ----------
    cohort : Cohort
        From :func:`simulate_cohort`.
    out_dir : str or Path
        Directory; existing files of the same names are overwritten.
    fmt : {"csv", "parquet"}
        CSV dates are written as ISO ``YYYY-MM-DD``.
    with_latent : bool
        Also write ``latent`` and ``ruptures`` (the generative truth, for oracle reports).

    Returns
    -------
    dict of str to Path
        Table name (``sessions``, ``clients``, and ``latent``, ``ruptures`` if asked) to file.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError("fmt must be 'csv' or 'parquet'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {"sessions": cohort.sessions, "clients": cohort.clients}
    if with_latent:
        tables |= {"latent": cohort.latent, "ruptures": cohort.ruptures}
    written: dict[str, Path] = {}
    for name, frame in tables.items():
        path = out / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False, date_format="%Y-%m-%d")
        else:
            frame.to_parquet(path, index=False)
        written[name] = path
    # Provenance marker: training reads it to label models trained on simulated data.
    marker = out / SIMULATION_MARKER
    marker.write_text(
        json.dumps(
            {
                "simulated": True,
                "profile": cohort.profile.name,
                "clients": int(len(cohort.clients)),
                "extraction_date": cohort.extraction_date.date().isoformat(),
            },
            indent=2,
        )
    )
    written["simulation"] = marker
    return written


def is_simulated(data_file: str | Path) -> bool:
    """Whether ``data_file`` sits in a folder written by :func:`write_cohort`."""
    return (Path(data_file).parent / SIMULATION_MARKER).is_file()
