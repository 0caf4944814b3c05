"""The dropout hazard's intercept, solved so the ended episodes' dropout share is the target.

``_solve_intercept`` is cached at module level, keyed by the frozen configuration and the
instrument's element names.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import replace

from features.profiles import InstrumentProfile, get_profile
from training.simulate.config import SimulationConfig
from training.simulate.paths import _OUTCOME_DROPOUT, _observed_outcome, _Paths, _simulate_paths

logger = logging.getLogger(__name__)


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
