"""AppTest: the Import page reads the file with neither SQLite's write lock nor this process's writer gate held.

The page ran the whole import, file reading included, inside ``db.begin()``: that unit of work holds the
process's first-come, first-served gate for SQLite writers from its start and the database's write lock
from its first statement (the admin check), so every annotator's save on the server waited for the read.
As in tests/test_import_lock.py, a second writer runs in the middle of the parse stage with no timeout.
"""

from __future__ import annotations

import threading

from sqlalchemy import select

from annotate.models import AuditEvent
from tests.test_import_lock import DATA, commit_from_another_connection, while_parsing  # noqa: F401
from tests.ui.conftest import open_page


def gate_is_free(database) -> bool:
    """Whether another thread of this process could take the writer gate at once (and give it back)."""
    free = []

    def probe() -> None:
        free.append(database._gate.acquire(0))
        if free[0]:
            database._gate.release()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return free[0]


def test_the_import_page_reads_the_file_with_no_writer_lock_held(app_db, people, while_parsing):
    url = str(app_db.engine.url)

    def writer() -> tuple[str, bool]:
        from annotate.ui import context  # the page's own Database (one per URL and process)

        return commit_from_another_connection(url), gate_is_free(context.get_db())

    results = while_parsing(writer)
    at = open_page(people[1], "admin_import.py")
    at.file_uploader(key="import_file").upload("pairs.jsonl", DATA, "application/jsonl")
    at.run()
    assert not at.exception, at.exception
    next(b for b in at.button if b.label == "Import").click().run()
    assert not at.exception, at.exception
    assert "added 5 comparisons" in at.success[0].value
    assert results == [("committed", True)] * 2  # choosing the file (its summary), then Import
    with app_db.read() as session:
        assert sorted(session.scalars(select(AuditEvent.action).where(AuditEvent.action.notlike("user.%")))) == [
            "concurrent", "concurrent", "import"]
