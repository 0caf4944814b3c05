"""How sentences quote numbers (models/drivers/wording.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from models.drivers.wording import rating, rating_text


@given(x=st.floats())
def test_rating_text_is_the_value_rounded_to_one_decimal(x: float) -> None:
    # rating_text formats directly ("z" drops the sign of a rounded zero); it must read as the
    # evidence's rating() does, so that a text and its evidence quote the same number.
    assert rating_text(x) == f"{rating(x):.1f}"
