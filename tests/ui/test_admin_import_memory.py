"""AppTest: what the Import page keeps in the session while a file is chosen."""

from __future__ import annotations

import json
import pickle
import tracemalloc

from sqlalchemy import func, select

from annotate.models import AuditEvent
from tests.ui.conftest import open_page


def _kept(at) -> int:
    """Bytes the session holds besides the upload widget's file (which Streamlit holds while it is chosen)."""
    return sum(len(pickle.dumps(at.session_state[key])) for key in at.session_state if key != "import_file")


def test_the_session_keeps_a_summary_of_the_file_not_its_rows(app_db, people):
    """The parsed file (every comparison's texts) stayed in the session for as long as the admin was logged in:
    a 250 MB upload held its size several times over."""
    content = b"prompt,chosen,rejected\n" + b"".join(
        b"prompt %d %s,good %d %s,bad %d %s\n" % (i, b"x" * 200, i, b"y" * 200, i, b"z" * 200) for i in range(3000))
    at = open_page(people[1], "admin_import.py")
    at.file_uploader(key="import_file").upload("pairs.csv", content, "text/csv")
    at.run()
    assert not at.exception, at.exception
    assert any("3000 comparisons" in m.value.replace(",", "") for m in at.markdown)
    assert _kept(at) < len(content) / 20, (_kept(at), len(content))
    at.run()  # a later run (any widget) uses the summary
    assert not at.exception and any("3000 comparisons" in m.value.replace(",", "") for m in at.markdown)
    next(b for b in at.button if b.label == "Import").click().run()
    assert not at.exception, at.exception
    [summary] = [s.value for s in at.success]
    assert "added 3000 comparisons" in summary.replace(",", "")
    assert _kept(at) < len(content) / 20, (_kept(at), len(content))
    with app_db.read() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "import")) == 1


def test_a_file_with_many_bad_rows_lists_the_first_thousand(app_db, people):
    """The session keeps at most 1,000 of a file's problems (a 250 MB file can have a problem on every row)."""
    content = b"prompt,response_a,response_b\n" + b"".join(b"p%d,a%d,\n" % (i, i) for i in range(1001))
    at = open_page(people[1], "admin_import.py")
    at.file_uploader(key="import_file").upload("pairs.csv", content, "text/csv")
    at.run()
    assert not at.exception, at.exception
    assert at.error[0].value.replace(",", "").startswith("1001 problems found"), at.error[0].value
    assert any(c.value == "The first 1,000 are listed." for c in at.caption)
    assert len(at.dataframe[0].value) == 1000
    assert next(b for b in at.button if b.label == "Import").disabled


def test_choosing_a_file_parses_it_without_a_list_of_every_comparison(app_db, people):
    """The page kept only a summary, but built it from parse_file's list of every comparison (each text as a
    Python string, the file's size again and more): a 100 MB file peaked at 337 MB (bench/import_page_memory.py).
    It now keeps the first rows for the preview and counts the rest. The peak left is the upload's copy that the
    page reads, plus what the parse holds per comparison (its hashes, to note repeated rows)."""
    content = b"".join(json.dumps({"prompt": f"Prompt {i}: " + "question " * 30, "winner": "a",
                                   "response_a": f"A {i} " + "alpha " * 200, "response_b": f"B {i} " + "beta " * 200,
                                   }).encode() + b"\n" for i in range(3000))
    at = open_page(people[1], "admin_import.py")
    at.file_uploader(key="import_file").upload("pairs.jsonl", content, "application/jsonl")
    tracemalloc.start()
    try:
        at.run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not at.exception, at.exception
    assert any("3000 comparisons" in m.value.replace(",", "") for m in at.markdown)
    assert len(at.dataframe[0].value) == 20  # the preview
    assert peak < 2 * len(content), (peak, len(content))
