"""What the simulator takes and gives: :class:`SimulationConfig` and :class:`Cohort`.

``SimulationConfig`` holds every parameter of the generative process with its source or tuning
target (``docs/simulator.md`` is the prose version); ``Cohort`` the four frames a run returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, timedelta

import pandas as pd

from features.profiles import InstrumentProfile

#: Days added to the extraction lag by :meth:`SimulationConfig.fully_followed`: longer than
#: any episode can run (``max_slots`` weekly slots with gaps).
FOLLOW_UP_DAYS = 3650

#: Progress callback: (stage, done, total). Stages: "calibrating", "simulating", "assembling".
ProgressFn = Callable[[str, int, int], None]


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
    # Censoring is administrative and depends on the intake date (extraction - intake is the
    # follow-up): a short window makes it heavy, e.g. 360 days leave ~27% ongoing, 240 ~40%,
    # and recent intakes that have ended are mostly dropouts (they end sooner).
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

    # --- Drift scenarios (off by default) --------------------------------------------------
    # For testing and demonstrating `alliance-risk monitor`: data that no longer looks like the
    # data a model was trained on. None of them is a claim about real clinics. They apply at
    # ``drift_clinic`` (a clinic id such as "K02"; None = every clinic) from ``drift_from``
    # (None = from the start): to sessions dated on or after it (ratings, instrument) or to
    # clients whose intake is on or after it (no-shows). The dropout intercept is always solved
    # without them, so a drifted cohort keeps the undrifted cohort's baseline.
    drift_clinic: str | None = None
    drift_from: date | None = None
    # Points added to every recorded rating (on the instrument's scale, clipped to it), after
    # the outcome is decided: a measurement change (a new way of handing out the form), not a
    # change in the alliance, so dropout does not follow it.
    rating_shift: float = 0.0
    # The clinic records this instrument profile instead (e.g. "srs"): each element of the
    # cohort's profile keeps its value where the new instrument has an item with the same
    # alliance-building focus (SRS relationship -> alliance6 empathy, goals -> goals, approach
    # -> collaboration, overall -> communication) and is left empty where it has none (alliance6
    # acceptance and trust), as an export that maps items by construct would do.
    instrument_change: str | None = None
    # Log-odds added to every affected client's no-show propensity (attendance only; the
    # dropout hazard then follows through the no-shows themselves). 1.0 roughly doubles the
    # no-show share.
    noshow_log_odds: float = 0.0

    def __post_init__(self) -> None:
        if not 0.02 <= self.dropout_rate <= 0.8:
            raise ValueError("dropout_rate must be between 0.02 and 0.8")
        if abs(sum(self.attendance_probs) - 1.0) > 1e-6:
            raise ValueError("attendance_probs must sum to 1")
        if abs(sum(self.terminal_miss_probs) - 1.0) > 1e-6:
            raise ValueError("terminal_miss_probs must sum to 1")
        if not 0.0 <= self.repair_probability <= 1.0:
            raise ValueError("repair_probability must be between 0 and 1")
        if self.enrolment_days < 1 or self.extraction_lag_days < 0:
            raise ValueError("enrolment_days must be >= 1 and extraction_lag_days >= 0")
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

        if self.drift_clinic is not None and self.drift_clinic not in self.clinic_ids:
            raise ValueError(
                f"drift_clinic must be one of the clinic ids {', '.join(self.clinic_ids)}"
            )

    @property
    def clinic_ids(self) -> tuple[str, ...]:
        """The clinic ids written to the tables: K01, K02, ..."""
        width = max(2, len(str(self.n_clinics)))
        return tuple(f"K{i:0{width}d}" for i in range(1, self.n_clinics + 1))

    @property
    def has_drift(self) -> bool:
        return bool(self.rating_shift or self.instrument_change or self.noshow_log_odds)

    def without_drift(self) -> SimulationConfig:
        """The same configuration with every drift scenario off (what the intercept is solved
        for)."""
        return replace(
            self,
            drift_clinic=None,
            drift_from=None,
            rating_shift=0.0,
            instrument_change=None,
            noshow_log_odds=0.0,
        )

    def fully_followed(self, intercept: float) -> SimulationConfig:
        """The same cohort followed until every episode has ended: the hazard intercept pinned
        to ``intercept`` (the censored configuration's), the extraction moved
        :data:`FOLLOW_UP_DAYS` later. Same seed, same episodes, nothing ``ongoing``."""
        return replace(
            self,
            dropout_intercept=intercept,
            extraction_lag_days=self.extraction_lag_days + FOLLOW_UP_DAYS,
        )

    def drift_day(self) -> int:
        """``drift_from`` as a day number of the simulation calendar (0 = ``start_date``)."""
        return 0 if self.drift_from is None else (self.drift_from - self.start_date).days

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
