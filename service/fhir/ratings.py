"""Alliance ratings in FHIR: an Observation with one component per element, or a
QuestionnaireResponse of an instrument's items, scored into the served profile's elements and
matched to the visit they rate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from features.profiles import PROFILES
from service.fhir import codes
from service.fhir.reader import (
    NOT_A_STRING,
    NOT_JSON_OBJECT,
    Reader,
    Visit,
    as_number,
    codings,
    parse_instant,
    status_of,
)

_RATING_STATUS = frozenset({"registered", "preliminary", "final", "amended", "corrected"})
_QR_STATUS = frozenset({"completed", "amended"})
OTHER_INSTRUMENT = "ratings of an instrument the served model does not use (see GET /v1/model)"
UNKNOWN_ITEM = "not an element or item code of this instrument in the local CodeSystem"
NEEDS_NUMBER = "needs a number value, or a dataAbsentReason when not rated"
NEEDS_ORDINAL = (
    "a coded answer needs its number: an ordinalValue (or itemWeight) extension with a "
    "valueDecimal on the Coding"
)
TWICE = "the same element or item is rated twice"
ITEMS_AND_SUBSCALE = "both a subscale and its items are given"
ITEM_OFF_SCALE = "item rating outside the instrument's scale"
NO_RATED_VISIT = "matches no single Appointment or Encounter (by encounter or by date)"
RATED_TWICE = "a second rating of the same appointment"


Rated = tuple[dict[str, float | None], list[str], dict[str, str]]


def visit_ratings(
    r: Reader,
    by_type: Mapping[str, list[tuple[int, Mapping[str, Any]]]],
    patient_id: str | None,
    visits: list[Visit],
) -> dict[int, Rated]:
    """Visit position -> (element ratings, the resources' references, element -> FHIRPath)."""
    out: dict[int, Rated] = {}
    instruments = {codes.instrument_code(p): p for p in PROFILES.values()}
    for kind in ("Observation", "QuestionnaireResponse"):
        for i, res in by_type.get(kind, []):
            at = r.at(i)
            if kind == "Observation":
                ours = [c for s, c in codings(res.get("code")) if s == codes.CODE_SYSTEM]
                instrument = next((c for c in ours if c in instruments), None)
                if instrument is None or status_of(res) not in _RATING_STATUS:
                    continue
                where = f"{at}.code"
                when = res.get("effectiveDateTime")
            else:
                url = res.get("questionnaire")
                if not isinstance(url, str) or not url.startswith(codes.QUESTIONNAIRE_BASE):
                    continue
                instrument = url.removeprefix(codes.QUESTIONNAIRE_BASE).split("|")[0]
                if status_of(res) not in _QR_STATUS:
                    continue
                where = f"{at}.questionnaire"
                when = res.get("authored")
            r.same_patient(res.get("subject"), patient_id, f"{at}.subject")
            if instruments.get(instrument) != r.profile:
                r.issue(where, "value", OTHER_INSTRUMENT)
                continue
            values = (
                _components(r, res, at)
                if kind == "Observation"
                else _items(r, res.get("item"), f"{at}.item")
            )
            scored = _score(r, values, at)
            ident = r.string(res, "id", at, required=True)
            position = _visit_of(r, res, when, visits, at)
            if scored is None or ident is None or position is None:
                continue
            if position in out:
                r.issue(at, "business-rule", RATED_TWICE)
                continue
            ratings = {e: v for e, (v, _) in scored.items()}
            paths = {e: p for e, (_, p) in scored.items()}
            out[position] = (ratings, [f"{kind}/{ident}"], paths)
    return out


Values = dict[str, tuple[float | None, str]]


def _value(
    r: Reader, holder: Mapping[str, Any], where: str, *, absent_ok: bool
) -> tuple[bool, float | None]:
    """(found, number) of ``valueQuantity.value``, ``valueInteger``, ``valueDecimal`` or the
    ordinal value of ``valueCoding`` (:func:`_ordinal`)."""
    if "valueCoding" in holder:
        number = _ordinal(r, holder["valueCoding"], f"{where}.valueCoding")
        return number is not None, number
    for key in ("valueInteger", "valueDecimal"):
        if key in holder:
            number = as_number(holder[key])
            if number is None:
                r.issue(f"{where}.{key}", "value", NEEDS_NUMBER)
                return False, None
            return True, number
    if "valueQuantity" in holder:
        quantity = holder["valueQuantity"]
        number = as_number(quantity.get("value")) if isinstance(quantity, Mapping) else None
        if number is None:
            r.issue(f"{where}.valueQuantity.value", "value", NEEDS_NUMBER)
            return False, None
        return True, number
    if absent_ok:
        return True, None
    r.issue(where, "required", NEEDS_NUMBER)
    return False, None


def _ordinal(r: Reader, coding: Any, where: str) -> float | None:
    """The number of a coded answer: the ``valueDecimal`` of its ordinal-value extension."""
    if not isinstance(coding, Mapping):
        r.issue(where, "structure", NOT_JSON_OBJECT)
        return None
    for ext in r.as_list(coding.get("extension"), f"{where}.extension"):
        if isinstance(ext, Mapping) and ext.get("url") in codes.ORDINAL_VALUE_EXTS:
            number = as_number(ext.get("valueDecimal", ext.get("valueInteger")))
            if number is not None:
                return number
    r.issue(where, "value", NEEDS_ORDINAL)
    return None


def _components(r: Reader, res: Mapping[str, Any], at: str) -> Values:
    values: Values = {}
    components = res.get("component")
    if not isinstance(components, list):
        r.issue(f"{at}.component", "required", NEEDS_NUMBER)
        return values
    for j, comp in enumerate(components):
        where = f"{at}.component[{j}]"
        if not isinstance(comp, Mapping):
            r.issue(where, "structure", NOT_JSON_OBJECT)
            continue
        code = next((c for s, c in codings(comp.get("code")) if s == codes.CODE_SYSTEM), None)
        if not isinstance(code, str):
            r.issue(f"{where}.code", "code-invalid", UNKNOWN_ITEM)
            continue
        found, number = _value(r, comp, where, absent_ok="dataAbsentReason" in comp)
        if found:
            _put(r, values, code, number, where)
    return values


def _items(r: Reader, items: Any, where: str) -> Values:
    """QuestionnaireResponse items (groups walked), by ``linkId``."""
    values: Values = {}
    if not isinstance(items, list):
        r.issue(where, "required", NEEDS_NUMBER)
        return values
    for k, item in enumerate(items):
        here = f"{where}[{k}]"
        if not isinstance(item, Mapping):
            r.issue(here, "structure", NOT_JSON_OBJECT)
            continue
        if isinstance(item.get("item"), list):
            for code, (number, path) in _items(r, item["item"], f"{here}.item").items():
                _put(r, values, code, number, path)
            continue
        link = item.get("linkId")
        if not isinstance(link, str):
            r.issue(f"{here}.linkId", "required", NOT_A_STRING)
            continue
        answers = item.get("answer") or []
        if (
            not isinstance(answers, list)
            or len(answers) > 1
            or (answers and not isinstance(answers[0], Mapping))
        ):
            r.issue(f"{here}.answer", "structure", NEEDS_NUMBER)
            continue
        found, number = (
            (True, None)
            if not answers
            else _value(r, answers[0], f"{here}.answer[0]", absent_ok=False)
        )
        if found:
            _put(r, values, link, number, here)
    return values


def _put(r: Reader, values: Values, code: str, number: float | None, where: str) -> None:
    if code in values:
        r.issue(where, "business-rule", TWICE)
    else:
        values[code] = (number, where)


def _score(r: Reader, values: Values, at: str) -> dict[str, tuple[float | None, str]] | None:
    """Element -> (rating, FHIRPath): elements as given, subscales as the mean of their items."""
    profile = r.profile
    elements = {codes.element_code(profile, e): e for e in profile.element_names}
    subscales = codes.subscale_items(profile)
    items = {codes.item_code(profile, n): (e, n) for e, ns in subscales.items() for n in ns}
    out: dict[str, tuple[float | None, str]] = {}
    item_values: dict[str, list[tuple[float | None, str]]] = {}
    ok = True
    for code, (number, where) in values.items():
        if code in elements:
            out[elements[code]] = (number, where)
        elif code in items:
            if number is not None and not profile.scale_min <= number <= profile.scale_max:
                r.issue(where, "value", ITEM_OFF_SCALE)
                ok = False
            item_values.setdefault(items[code][0], []).append((number, where))
        else:
            r.issue(where, "code-invalid", UNKNOWN_ITEM)
            ok = False
    for element, answered in item_values.items():
        if element in out:
            r.issue(out[element][1], "business-rule", ITEMS_AND_SUBSCALE)
            ok = False
            continue
        numbers = [v for v, _ in answered if v is not None]
        mean = sum(numbers) / len(numbers) if len(numbers) >= codes.WAI_SR_MIN_ITEMS else None
        out[element] = (mean, at)
    return out if ok else None


def _visit_of(
    r: Reader, res: Mapping[str, Any], when: Any, visits: list[Visit], at: str
) -> int | None:
    """Position of the visit a rating belongs to: its ``encounter``, else its day."""
    encounter = r.ref(res.get("encounter"), ("Encounter",))
    if encounter is not None:
        for n, visit in enumerate(visits):
            if f"Encounter/{encounter}" in visit.refs:
                return n
        r.issue(f"{at}.encounter", "not-found", NO_RATED_VISIT)
        return None
    moment = parse_instant(when)
    if moment is None:
        r.issue(at, "required", NO_RATED_VISIT)
        return None
    day = moment.date()
    same_day = [n for n, v in enumerate(visits) if v.start.date() == day]
    if len(same_day) > 1:
        same_day = [n for n in same_day if visits[n].attendance == "attended"]
    if len(same_day) != 1:
        r.issue(at, "not-found", NO_RATED_VISIT)
        return None
    return same_day[0]
