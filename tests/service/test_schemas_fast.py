"""The batch fast path (msgspec) against the pydantic schemas it mirrors.

``parse_valid_batch`` decodes a batch body with msgspec and falls back to pydantic when msgspec
refuses it. That is only correct if msgspec never accepts what pydantic refuses, and gives the
same values when both accept. These tests hold both: the constraints through the two JSON schemas
(a field added or tightened on one side only fails here), and the two decoders on generated
bodies full of edge cases.
"""

from __future__ import annotations

import copy
import json
import math
from datetime import date
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.schemas import (
    _FAST_BATCH,
    _FAST_ONE,
    _VALID_BATCH,
    RISK_REQUEST_EXAMPLE,
    EpisodeStruct,
    RiskRequest,
    SessionIn,
    SessionStruct,
    parse_request,
    parse_valid_batch,
)

_DROP = {"title", "description", "examples", "default"}


def _normalise(node: Any, refs: dict[str, str], pydantic: bool) -> Any:
    """A JSON schema without prose or defaults; a final $ in pydantic's patterns (Rust regex, end
    of text) written as Python's \\Z, which is what msgspec's must say (see schemas.py)."""
    if isinstance(node, list):
        return [_normalise(x, refs, pydantic) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _normalise(v, refs, pydantic) for k, v in node.items() if k not in _DROP}
    if "$ref" in out:
        out["$ref"] = refs.get(out["$ref"].rsplit("/", 1)[-1], out["$ref"])
    if pydantic and out.get("pattern", "").endswith("$") and not out["pattern"].endswith("\\$"):
        out["pattern"] = out["pattern"][:-1] + "\\Z"
    if "enum" in out:
        out["enum"] = sorted(out["enum"])
        out.pop("type", None)  # pydantic adds "type": "string" to a Literal; same values
    if "required" in out:
        out["required"] = sorted(out["required"])
    return out


def _component(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return schema["$defs"][name] if "$defs" in schema and name in schema["$defs"] else schema


@pytest.mark.parametrize(
    ("model", "struct"), [(RiskRequest, EpisodeStruct), (SessionIn, SessionStruct)]
)
def test_fast_path_has_the_same_fields_and_constraints(model: Any, struct: Any) -> None:
    refs = {"SessionStruct": "Session", "SessionIn": "Session"}
    ours = _normalise(_component(model.model_json_schema(), model.__name__), refs, pydantic=True)
    fast = _normalise(
        _component(msgspec.json.schema(struct), struct.__name__), refs, pydantic=False
    )
    assert set(fast["properties"]) == set(ours["properties"])
    for name in ours["properties"]:
        assert fast["properties"][name] == ours["properties"][name], name
    assert fast["required"] == ours["required"]
    assert fast["additionalProperties"] is False and ours["additionalProperties"] is False


def _plain(value: Any) -> Any:
    """Decoded objects as comparable builtins; floats by their bits (-0.0 is not 0.0)."""
    if isinstance(value, msgspec.Struct):
        return {f: _plain(getattr(value, f)) for f in value.__struct_fields__}
    if isinstance(value, RiskRequest | SessionIn):
        return {f: _plain(getattr(value, f)) for f in type(value).model_fields}
    if isinstance(value, list):
        return [_plain(x) for x in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float):
        return ("float", value.hex())
    return value


def _body(clients: list[Any]) -> bytes:
    return json.dumps({"clients": clients}).encode()


def test_a_valid_body_takes_the_fast_path_with_pydantics_values() -> None:
    second = copy.deepcopy(RISK_REQUEST_EXAMPLE)
    second["client_id"] = "c-2"
    second["sessions"][0]["ratings"]["goals"] = 7  # an integer rating: a float either way
    raw = _body([RISK_REQUEST_EXAMPLE, second])
    fast = parse_valid_batch(raw)
    assert all(isinstance(x, EpisodeStruct) for x in fast)
    assert _plain(fast) == _plain(_VALID_BATCH.validate_json(raw).clients)
    assert fast[1].sessions[0].ratings["goals"] == 7.0
    assert isinstance(fast[0].sessions[0].session_date, date)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("sessions", 0, "session_number"), "1"),  # pydantic's lax mode reads "1" as 1
        (("sessions", 0, "session_number"), 1.0),
        (("age",), "23"),
        (("sessions", 0, "ratings", "goals"), "8.5"),
    ],
)
def test_a_body_only_pydantic_accepts_is_still_accepted(path: tuple[Any, ...], value: Any) -> None:
    item = copy.deepcopy(RISK_REQUEST_EXAMPLE)
    target = item
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    raw = _body([item])
    with pytest.raises(msgspec.ValidationError):
        _FAST_BATCH.decode(raw)
    parsed = parse_valid_batch(raw)
    assert all(isinstance(x, RiskRequest) for x in parsed)
    assert _plain(parsed) == _plain(_VALID_BATCH.validate_json(raw).clients)


def test_an_invalid_item_still_raises_pydantics_error() -> None:
    bad = copy.deepcopy(RISK_REQUEST_EXAMPLE)
    bad["sessions"][0]["attendance"] = "present"
    with pytest.raises(ValidationError):
        parse_valid_batch(_body([RISK_REQUEST_EXAMPLE, bad]))


# -- generated bodies -------------------------------------------------------------------------

_TEXT = st.sampled_from(
    ["c-1", "", "x" * 128, "x" * 129, "abc\n", "a\tb", "\x00", "é😀", "\ud800", " ", "a\x1f",
     "a\x7f", "12"]
)  # fmt: skip
_NUMBER = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 120, 121, -1, 10_000, 10_001, 0.0, -0.0, 1.0, 5.5, 1e400]),
)
_DATE = st.one_of(
    st.dates(min_value=date(1, 1, 1)).map(date.isoformat),
    st.sampled_from(["2026-02-30", "2026-1-01", "2026-01-01T00:00:00", "2026-01-01T00:00:00Z",
                     "20260101", "2026-13-01", "0000-01-01", " 2026-01-01", "2026-01-01 "]),
    st.integers(-(10**10), 10**10),
)  # fmt: skip
# Fresh empty containers per draw (st.builds): st.just({}) hands out ONE dict, which a later
# mutation could fill with itself (a cycle) or carry into the next example.
_ANY = st.one_of(
    _TEXT, _NUMBER, _DATE, st.none(), st.booleans(), st.builds(list), st.builds(dict),
    st.sampled_from(["attended", "no_show", "Attended", "late_cancel", "rescheduled"]),
)  # fmt: skip
_SESSION_KEYS = ["session_number", "session_date", "attendance", "ratings"]
_CLIENT_KEYS = ["client_id", "clinic_id", "therapist_id", "intake_date", "age", "gender",
                "referral_source", "sessions"]  # fmt: skip


_EDGE_VALUES: list[Any] = [
    None, True, 0, 1, -1, 120, 121, 10_000, 10_001, 2**63, 1.0, 5.5, -0.0, float("inf"), "1", "8.5",
    "", " ", "x" * 64, "x" * 65, "x" * 128, "x" * 129, "abc\n", "a\tb", "\x00", "a\x1f", "a\x7f",
    "é😀", "\ud800", "2026-09-01", "2026-02-30", "2026-1-01", "2026-09-01T00:00:00", "20260901",
    1_788_220_800, "attended", "Attended", "no_show", [], {}, {"goals": 8.0}, {"unknown": 1.0},
    {"goals": None}, {"goals": "8"},
]  # fmt: skip


def _soundness(raw: bytes) -> str:
    """Decode ``raw`` both ways; fail if msgspec accepts what pydantic refuses or differs."""
    try:
        fast = _FAST_BATCH.decode(raw).clients
    except (msgspec.MsgspecError, ValueError):
        fast = None
    try:
        slow = _VALID_BATCH.validate_json(raw).clients
    except ValidationError:
        assert fast is None, "msgspec accepted a body pydantic refuses"
        with pytest.raises(ValidationError):
            parse_valid_batch(raw)
        return "both refuse"
    assert _plain(parse_valid_batch(raw)) == _plain(slow)
    if fast is None:
        return "pydantic only"
    assert _plain(fast) == _plain(slow)
    return "both accept"


def _single_soundness(raw: bytes) -> str:
    """As :func:`_soundness`, for one client's body (``POST /v1/risk``) and ``parse_request``."""
    try:
        fast = _FAST_ONE.decode(raw)
    except (msgspec.MsgspecError, ValueError):
        fast = None
    try:
        slow = RiskRequest.model_validate_json(raw)
    except ValidationError as refused:
        assert fast is None, "msgspec accepted a body pydantic refuses"
        with pytest.raises(ValidationError) as raised:
            parse_request(raw)
        assert raised.value.errors() == refused.errors()  # the same problems reported
        return "both refuse"
    parsed = parse_request(raw)
    assert _plain(parsed) == _plain(slow)
    if fast is None:
        assert isinstance(parsed, RiskRequest)
        return "pydantic only"
    assert isinstance(parsed, EpisodeStruct) and _plain(fast) == _plain(slow)
    return "both accept"


def test_every_field_with_every_edge_value() -> None:
    """One field of the example changed at a time, to every edge value (and removed)."""
    seen, seen_single = set(), set()
    sites: list[tuple[Any, ...]] = [(k,) for k in [*_CLIENT_KEYS, "extra"]]
    sites += [("sessions", 0, k) for k in [*_SESSION_KEYS, "extra"]]
    sites += [("sessions", 0, "ratings", k) for k in ("goals", "unknown")]
    for site in sites:
        for value in [*_EDGE_VALUES, _REMOVE]:
            item = copy.deepcopy(RISK_REQUEST_EXAMPLE)
            target = item
            for key in site[:-1]:
                target = target[key]
            if value is _REMOVE:
                target.pop(site[-1], None)
            else:
                target[site[-1]] = value
            raw = ("{" + f'"clients":{_dumps([item], None)}' + "}").encode("utf-8", "surrogatepass")
            seen.add(_soundness(raw))
            single = _dumps(item, None).encode("utf-8", "surrogatepass")
            seen_single.add(_single_soundness(single))
    assert seen == seen_single == {"both refuse", "pydantic only", "both accept"}


_REMOVE = object()


@st.composite
def _mutated(draw: st.DrawFn) -> Any:
    """The schema's example with a few fields replaced, removed, added or duplicated."""
    item = copy.deepcopy(RISK_REQUEST_EXAMPLE)
    for _ in range(draw(st.integers(0, 4))):
        where = draw(st.sampled_from(["client", "session", "rating"]))
        if where == "client":
            target, key = item, draw(st.sampled_from([*_CLIENT_KEYS, "extra"]))
        else:
            sessions = item.get("sessions")
            if not isinstance(sessions, list) or not sessions:
                continue
            s = sessions[draw(st.integers(0, len(sessions) - 1))]
            if where == "session":
                target, key = s, draw(st.sampled_from([*_SESSION_KEYS, "extra"]))
            else:
                target = s.setdefault("ratings", {}) if isinstance(s.get("ratings"), dict) else s
                key = draw(st.sampled_from(["goals", "trust", "unknown"]))
        if not isinstance(target, dict):
            continue
        action = draw(st.sampled_from(["set", "set", "set", "delete"]))
        if action == "delete":
            target.pop(key, None)
        else:
            target[key] = draw(_ANY)
    return item


def _dumps(value: Any, duplicate: str | None) -> str:
    """JSON text; with ``duplicate``, that key appears twice (first a decoy) in every object."""
    if isinstance(value, dict):
        parts = [f"{json.dumps(k)}:{_dumps(v, duplicate)}" for k, v in value.items()]
        if duplicate in value:
            parts.insert(0, f'{json.dumps(duplicate)}:"decoy"')
        return "{" + ",".join(parts) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dumps(v, duplicate) for v in value) + "]"
    if isinstance(value, float) and math.isinf(value):
        return "1e400"
    return json.dumps(value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    clients=st.lists(_mutated(), min_size=1, max_size=3),
    duplicate=st.sampled_from([None, None, "session_number", "client_id", "goals", "age"]),
)
def test_the_fast_path_never_accepts_what_pydantic_refuses(
    clients: list[Any], duplicate: str | None
) -> None:
    raw = ("{" + f'"clients":{_dumps(clients, duplicate)}' + "}").encode("utf-8", "surrogatepass")
    _soundness(raw)
    _single_soundness(_dumps(clients[0], duplicate).encode("utf-8", "surrogatepass"))
