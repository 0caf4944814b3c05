"""Stepping through appointment slots for all clients at once, and the outcome at extraction.

Draws that can change an episode's path (attendance, dates, ruptures, repair, the dropout
decision, terminal misses) come from one stream and are made for every client at every slot,
used or not, so pilot cohorts at different intercepts share random numbers; draws that only
change rating values come from a second stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.simulate.config import ProgressFn, SimulationConfig
from training.simulate.intake import _ATT, _CX, _LC, _NS, _RS, _decline, _draw_static, _Static

# Eventual outcomes as small integers; 2 (ongoing) exists only as observed at extraction.
_OUTCOME_COMPLETED, _OUTCOME_DROPOUT = 0, 1


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
