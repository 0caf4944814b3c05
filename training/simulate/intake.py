"""Per-client quantities fixed at intake, drawn for all clients at once.

Therapist and clinic, dates, demographics, the latent alliance (level, growth, element
deviations), rating noise, no-show propensity, planned length, the deterioration process and
the intake part of the dropout log-odds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.simulate.config import SimulationConfig

# Attendance codes as small integers, in contract order.
_ATT, _NS, _LC, _CX, _RS = range(5)


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
    if cfg.noshow_log_odds:  # drift scenario: no attendance change, no extra random draw
        affected = intake_day >= cfg.drift_day()
        if cfg.drift_clinic is not None:
            affected &= clinic == cfg.clinic_ids.index(cfg.drift_clinic)
        logits[affected, _NS] += cfg.noshow_log_odds
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
