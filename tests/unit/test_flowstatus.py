"""`fit_results`: a reply's step results cut to its budget, as a table written out by hand."""

from __future__ import annotations

import pytest

from supervisord.core.flowstatus import fit_results

pytestmark = pytest.mark.timeout(10)


def views(*per_flow: list[str | None]) -> list[dict[str, object]]:
    return [{"steps": [{"name": f"s{i}", "result": r} for i, r in enumerate(results)]} for results in per_flow]


def results(vs: list[dict[str, object]]) -> list[list[tuple[str | None, int | None]]]:
    return [[(s["result"], s.get("result_cut_bytes")) for s in v["steps"]] for v in vs]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("given", "budget", "expected"), [
    # within the budget: untouched, nothing marked
    ([["abc", None, "xyz"]], 6, [[("abc", None), (None, None), ("xyz", None)]]),
    # the small ones whole, the big one what is left
    ([["abc", "0123456789", "xyz"]], 10, [[("abc", None), ("0123", 6), ("xyz", None)]]),
    # two big ones share equally, across workflows
    ([["a" * 20], ["b" * 30, "c"]], 11, [[("a" * 5, 15)], [("b" * 5, 25), ("c", None)]]),
    # never half a character: 'é' is two bytes
    ([["é" * 4]], 5, [[("éé", 4)]]),
    # no room at all
    ([["abc"]], 0, [[("", 3)]]),
])
def test_fit_results(given: list[list[str | None]], budget: int,
                     expected: list[list[tuple[str | None, int | None]]]) -> None:
    vs = views(*given)
    fit_results(vs, budget)
    assert results(vs) == expected
