"""Exports as a team training a reward model filters them: how many votes a pair rests on."""

from __future__ import annotations

import pytest

from annotate import export
from annotate.errors import PrefloopError
from annotate.export import ExportFilter
from tests.test_export import _rows, seeded  # noqa: F401  (seeded is a fixture)


def test_min_votes_drops_pairs_judged_too_few_times(db, seeded):  # noqa: F811
    """Mid-campaign at overlap 2, a pair judged once is exported with agreement 1.0, so a minimum agreement
    keeps it above every pair two people agreed on but one; min_votes is the filter that leaves it out."""
    def data(f):
        once = f.comparison()
        f.judge(once, "ann", "a")
        twice = f.comparison()
        f.judge(twice, "ann", "b")
        f.judge(twice, "other", "b")
        return once.id, twice.id

    admin, (once, twice) = seeded(data)
    assert {r["comparison_id"] for r in _rows(db, admin, min_agreement=0.9)} == {once, twice}
    assert [r["comparison_id"] for r in _rows(db, admin, min_votes=2)] == [twice]
    assert _rows(db, admin, min_votes=3) == []
    for bad in (0, 1.5, True):
        with db.begin() as session, pytest.raises(PrefloopError, match="minimum votes"):
            export.preference_rows(session, actor=admin, filters=ExportFilter(min_votes=bad))

