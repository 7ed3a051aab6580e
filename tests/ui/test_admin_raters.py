"""AppTest tests of the raters an import names (``annotator``) on the admin pages: the Review page's judgments
and the Import page's preview showed neither the rater nor that the file named any."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from annotate import ingest
from annotate.models import Comparison, Judgment
from annotate.settings import load_settings
from tests.test_ingest import jsonl, pair
from tests.ui.conftest import open_page

TIMEOUT = 60
EVIL = "![t](https://evil.example/q.png)"  # a rater id is the file's text


def _frame_with(at, column: str):
    return next(e.value for e in at.dataframe if column in e.value.columns)


def test_review_names_the_rater_of_each_imported_judgment(app_db, people):
    annotator = people[0]
    rows = [pair(1, winner="a", annotator="r1"), pair(1, winner="b", annotator=EVIL), pair(1, winner="a")]
    with app_db.begin() as s:
        ingest.import_file(s, load_settings(), jsonl(*rows), filename="raters.jsonl", system=True)
        cid = s.scalar(select(Comparison.id))
        s.add(Judgment(comparison_id=cid, annotator_id=annotator.id, choice="b", a_on_left=True, time_spent_ms=900))

    at = open_page(people[1], "review.py", TIMEOUT)
    at.number_input(key="review_id").set_value(cid).run()
    assert not at.exception, at.exception
    judgments = _frame_with(at, "choice")
    assert sorted(zip(judgments["annotator"], judgments["choice"])) == sorted([
        ("(imported)", "a"), ("(imported, rater r1)", "a"), (f"(imported, rater {EVIL})", "b"), ("ann", "b")])
    assert not any("evil.example" in md.value for md in at.markdown)


@pytest.mark.parametrize(("rows", "raters"), [
    ([pair(1, winner="a", annotator="r1"), pair(2), pair(3, winner="b")], ["r1", None, None]),
    ([pair(1, winner="a"), pair(2)], None),
], ids=["a rater named", "none named"])
def test_import_preview_shows_the_raters_when_the_file_names_any(app_db, people, rows, raters):
    at = open_page(people[1], "admin_import.py", TIMEOUT)
    at.file_uploader(key="import_file").upload("pairs.jsonl", jsonl(*rows), "application/jsonl")
    at.run()
    assert not at.exception, at.exception
    preview = _frame_with(at, "prompt")
    if raters is None:
        assert "annotator" not in preview.columns
    else:
        assert list(preview.columns).index("annotator") == list(preview.columns).index("winner") + 1
        assert [v if isinstance(v, str) else None for v in preview["annotator"]] == raters
