"""The log line format: what each kind of value becomes (expected lines written out by hand)."""

from __future__ import annotations

import pytest

from supervisord import logfmt


@pytest.mark.parametrize(("value", "written"), [
    (7, "k=7"),
    ("plain", "k=plain"),
    ("", 'k=""'),
    ("two words", 'k="two words"'),
    ('say "hi"', 'k="say \\"hi\\""'),
    ("a=b", 'k="a=b"'),
    ("line\nbreak", 'k="line\\nbreak"'),
    ("tab\there", 'k="tab\there"'),
    ("back\\slash", "k=back\\slash"),
    ("back\\ slash", 'k="back\\\\ slash"'),
    (1.5, "k=1.5"),
    (True, "k=True"),
])
def test_a_value_is_bare_when_it_can_be_else_quoted_and_escaped(value: object, written: str) -> None:
    assert logfmt.fields({"k": value}) == [written]


def test_fields_keep_their_order_and_none_is_left_out() -> None:
    assert logfmt.fields({"b": 1, "a": None, "c": "x y", "d": 0}) == ["b=1", 'c="x y"', "d=0"]
