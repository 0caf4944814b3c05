"""Render the feature reference (``docs/features.md``) from the registry, so it cannot drift.

``scripts/gen_feature_docs.py`` writes the file; a test checks the committed file equals
:func:`render_feature_docs`.
"""

from __future__ import annotations

from collections.abc import Iterable

from features.profiles import PROFILES, InstrumentProfile
from features.registry import (
    RUPTURE_FLOOR_FRACTION,
    RUPTURE_MIN_HISTORY,
    FeatureRegistry,
    feature_registry,
)

_INTRO = f"""\
# Features

Generated from `features/registry.py` by `scripts/gen_feature_docs.py`; do not edit by hand.

Every model input is listed below, per instrument profile, with its explanation group (the
alliance element it derives from, `alliance_overall` for the mean of the rated elements,
`attendance`, `engagement` or `client`), its unit and its meaning. Column order in the tables is
the column order of the feature matrix.

## Definitions

- **Landmark k**: the client's state once the k-th scheduled appointment has happened. Features
  at landmark k use only appointments with `session_number <= k`; "days since" features count
  from the date of appointment k, never from today.
- **Rated session**: an attended appointment with at least one alliance rating (for an element's
  features: with that element rated). Ratings recorded on appointments that were not attended are
  ignored.
- **Element mean** (`alliance_overall`): the mean of the elements rated at a session.
- **Total**: the instrument's headline score. SRS sums its items (prorated to all items when
  some are unrated); the other profiles use the element mean. Cut-off and drop rules compare the
  total with the profile's thresholds.
- **Ruptures**: a drop from the previous rated session of at least z x max(the client's own SD
  up to that previous session, floor), for z = 1 and z = 2. The floor is
  {RUPTURE_FLOOR_FRACTION:.0%} of the scale range (0.5 points on 0-10, 0.2 on 1-5); while fewer than
  {RUPTURE_MIN_HISTORY} sessions were rated before the drop, the floor alone is the threshold. A
  rupture is repaired once a later rated session returns to the level before the drop.
- **NaN by design**: a feature that is undefined (no rated session yet, fewer than 2 rated
  sessions for trends and variability, never attended, a single appointment for gaps) is NaN,
  never a made-up number and never infinite; indicators (`*_n_rated`, `engagement_never_rated`,
  `engagement_never_attended`, `*_has_rupture`) say why.
- **Comparisons with cut-offs** tolerate one billionth of the scale range, so that decimal ratings
  such as 8.7 - 8.2 meet a 0.5 threshold.
- **Client covariates** (`client` group) are included only with `include_covariates=True`:
  age and an age < 25 flag. Gender and referral source are kept for fairness audits and are never
  model inputs.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(registry: FeatureRegistry) -> list[str]:
    lines = ["| # | feature | group | kind | unit | meaning |", "|---|---|---|---|---|---|"]
    for i, f in enumerate(registry.features, start=1):
        lines.append(
            f"| {i} | `{f.name}` | {f.group} | {f.kind} | {_cell(f.unit)} | {_cell(f.description)} |"
        )
    return lines


def _profile_section(profile: InstrumentProfile) -> list[str]:
    registry = feature_registry(profile, include_covariates=True)
    n_model = len(feature_registry(profile).features)
    elements = ", ".join(f"`{e.name}` ({e.label})" for e in profile.elements)
    lines = [
        f"## Profile `{profile.name}`",
        "",
        profile.description,
        "",
        f"- Elements: {elements}; scale {profile.scale_min:g}-{profile.scale_max:g}.",
        f"- Total: {profile.total}; cut-off {profile.cutoff_total:g}; element cut-off "
        f"{profile.element_cutoff:g}; drop alert at a fall of {profile.drop_points:g}.",
        f"- {n_model} features ({len(registry.features)} with client covariates).",
    ]
    lines += [f"- Source: {s}" for s in profile.sources]
    lines += ["", *_table(registry), ""]
    return lines


def render_feature_docs(profiles: Iterable[InstrumentProfile] | None = None) -> str:
    """The Markdown feature reference for ``profiles`` (default: every known profile)."""
    chosen = list(PROFILES.values()) if profiles is None else list(profiles)
    lines = [_INTRO]
    for profile in chosen:
        lines += _profile_section(profile)
    return "\n".join(lines).rstrip("\n") + "\n"
