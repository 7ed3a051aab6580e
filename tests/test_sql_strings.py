"""No SQL is built from strings with values in them: queries go through SQLAlchemy's expressions or
bound parameters. The few statements formatted in code are listed here with what they interpolate
(identifiers quoted by the dialect, or fixed choices in the code, never a user's value); a new one
fails until it is checked and listed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|TRUNCATE|ALTER|BEGIN|PRAGMA|COPY|ANALYZE|SET)\b")

ALLOWED = {
    ("annotate/db.py", "_on_connect"): "the busy timeout, a number from the code",
    ("annotate/db.py", "_on_begin"): "DEFERRED or IMMEDIATE, picked in the code",
    ("annotate/ingest.py", "_insert_rows"): "table and column names quoted by the dialect; values are bound (?)",
    ("annotate/ingest.py", "_copy_insert_batches"): "staging table and column names quoted by the dialect",
    ("annotate/retrain.py", "write_priorities"): "which SET clauses to include, fixed strings; values are bound",
}


def _formatted_sql(root: Path = REPO) -> set[tuple[str, str | None]]:
    """(file, enclosing function) of every f-string, ``%`` or ``.format`` whose text reads as SQL, in the
    ``annotate`` and ``rm`` packages under ``root``."""
    found = set()
    for path in sorted([*(root / "annotate").rglob("*.py"), *(root / "rm").rglob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        owner = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                owner.update((id(sub), node.name) for sub in ast.walk(node))
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant):
                parts = [node.left.value]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
                  and isinstance(node.func.value, ast.Constant)):
                parts = [node.func.value.value]
            else:
                continue
            if any(isinstance(p, str) and SQL.search(p) for p in parts):
                found.add((path.relative_to(root).as_posix(), owner.get(id(node))))
    return found


def test_sql_is_formatted_only_where_listed():
    found = _formatted_sql()
    assert found - set(ALLOWED) == set(), "SQL built from a formatted string: bind the values instead"
    assert set(ALLOWED) - found == set(), "listed but gone: remove it from ALLOWED"


def test_the_check_sees_formatted_sql(tmp_path):
    """Not vacuous: an f-string query with a value in it, as an injectable lookup would be, is found."""
    (tmp_path / "annotate").mkdir()
    (tmp_path / "annotate" / "lookup.py").write_text(
        'def by_name(session, name):\n'
        '    return session.execute(text(f"SELECT id FROM users WHERE username = \'{name}\'"))\n'
        'def by_id(session, i):\n'
        '    return session.execute(text("DELETE FROM users WHERE id = %s" % i))\n'
        'def plain(session):\n'
        '    return session.execute(text("SELECT 1"))\n')
    assert _formatted_sql(tmp_path) == {("annotate/lookup.py", "by_name"), ("annotate/lookup.py", "by_id")}
