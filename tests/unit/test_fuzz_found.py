"""Inputs the property tests and the API fuzzer found mishandled below the HTTP layer, kept as
plain regression tests (the API-level ones are in tests/integration/test_fuzz_found.py)."""

from __future__ import annotations

import time

import pytest

from fluxrun.api.body import parse_lenient
from fluxrun.auth import nonce_problem, nonce_time, sign, verify
from fluxrun.errors import ValidationError
from fluxrun.tools.catalog import find_tool

PIXEL = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")


@pytest.mark.parametrize("nonce", ["²", "¹23", "٣٣٣٣٣٣٣٣٣٣"])
def test_a_nonce_of_other_digits_is_no_time_and_refused_by_its_rule(nonce: str) -> None:
    # "²".isdigit() is true and int("²") raises: a signed request with such a nonce was a 500.
    # Now it is not read as a time, and refused as not printable ASCII (a 401 naming the rule).
    assert nonce_time(nonce) is None
    assert "printable ASCII" in (nonce_problem(nonce, time.time()) or "")
    assert verify("key", "secret", nonce, sign("key", "secret", nonce))


@pytest.mark.parametrize(("body", "message"), [
    ({"prompt": "x", "scale": 10**400}, "scale: must be a finite number (got 1000000000000000000000000000000000000...)"),
    ({"prompt": "x", "steps": 10**400}, "steps: must be between 1 and 50 (got 1000000000000000000000000000000000000...)"),
    ({"prompt": "x", "width": -(10**30)}, "width: must be between 64 and 2048 (got -1000000000000000000000000000000)"),
])
def test_numbers_beyond_a_float_are_refused_by_name(body: dict, message: str) -> None:
    # float() of such an int raises OverflowError: validation raised it (a 500 at the API).
    with pytest.raises(ValidationError) as refused:
        PIXEL.validate(body)
    assert str(refused.value) == message


def test_a_single_quoted_string_with_a_line_break_keeps_its_escapes_decoded() -> None:
    # A raw control character made the string's JSON decoding fail, and its escapes were kept as typed.
    assert parse_lenient("{'prompt': 'two\nlines, a \\\\ and a \\'quote\\'', }") == {
        "prompt": "two\nlines, a \\ and a 'quote'"}
    assert parse_lenient('{"prompt": "two\nlines \\"q\\"", steps: 4}') == {"prompt": 'two\nlines "q"', "steps": 4}
