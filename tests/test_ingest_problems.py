"""A file's row problems: the first MAX_PROBLEMS_KEPT are kept (by line) and counted up to
MAX_PROBLEMS_COUNTED, where reading stops ("at least").

Every bad line appended a (line, reason) problem, with no bound, at some 185 bytes each, and gzip shrinks a
file of repeated bad lines about a thousandfold: parse_file of 8 MB of "1" lines (a 7.8 KB .gz) took +740 MB,
and the 200 MB a ~200 KB upload may decompress to came to some 18 GB, on the Import page as soon as the file
was chosen. Lists of the lines a note names, a rater's conflicting answers and a .json array's elements grew
with every row too.
"""

from __future__ import annotations

import gzip
import json
import tracemalloc

import pytest

from annotate import cli, ingest
from annotate.errors import ImportValidationError
from tests.ui.conftest import app_db, open_page, people, ui_template  # noqa: F401 (the Import page's fixtures)

CAP = ingest.MAX_PROBLEMS_KEPT
PAIR = {"prompt": "p", "response_a": "a", "response_b": "b"}


def _jsonl(*rows) -> bytes:
    return b"".join((row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n" for row in rows)


def test_a_file_of_bad_lines_keeps_the_first_problems_and_counts_them_all():
    n = CAP + 2345
    with pytest.raises(ImportValidationError) as caught:
        ingest.parse_file(gzip.compress(b"1\n" * n), filename="ones.jsonl.gz")
    exc = caught.value
    assert "could not detect the file's format" in str(exc)
    assert exc.count == n
    assert len(exc.problems) == CAP
    assert [line for line, _ in exc.problems] == list(range(1, CAP + 1))
    assert exc.problems[0] == (1, "a row must be a JSON object, not a number")


def test_parse_file_counts_problems_past_the_ones_it_keeps():
    n = CAP + 10
    parsed = ingest.parse_file(_jsonl(PAIR, *[b"[]"] * n, {"prompt": "q", "response_a": "a"}),
                               filename="x.jsonl")
    assert parsed.problem_count == n + 1 and not parsed.ok
    assert len(parsed.problems) == CAP
    assert parsed.problems[0] == (2, "a row must be a JSON object, not a list")
    assert parsed.problems[-1][0] == CAP + 1
    assert parsed.rows == n + 2 and parsed.comparison_count == 1


def test_a_file_with_few_problems_lists_them_all():
    parsed = ingest.parse_file(_jsonl(PAIR, b"1", b"{}", PAIR), filename="x.jsonl")
    assert parsed.problem_count == 2 == len(parsed.problems)
    assert [line for line, _ in parsed.problems] == [2, 3]
    assert ingest.parse_file(_jsonl(PAIR), filename="x.jsonl").ok


def test_the_first_problems_are_kept_by_line_whatever_order_they_are_found_in(monkeypatch):
    """Problems found after the rows (a comparison past the file's limit, one rater's other answer) merge
    with the others by line: the earliest lines are the ones kept."""
    monkeypatch.setattr(ingest, "MAX_PROBLEMS_KEPT", 3)
    rows = [{**PAIR, "winner": "a", "annotator": "r1"}, {**PAIR, "winner": "b", "annotator": "r1"},
            *[b"7"] * 5, {**PAIR, "winner": "tie", "annotator": "r1"}]
    parsed = ingest.parse_file(_jsonl(*rows), filename="x.jsonl")
    assert parsed.problem_count == 7
    assert [line for line, _ in parsed.problems] == [2, 3, 4]
    assert "annotator 'r1' gives this pair another winner than on line 1" in parsed.problems[0][1]

    problems = ingest._Problems()
    problems.extend([(9, "i"), (8, "h"), (1, "a"), (5, "e"), (1, "b"), (2, "c")])
    problems.extend([(3, "x")], count=4)  # the listed part of four
    assert problems.count == 10
    assert problems.listed() == [(1, "a"), (1, "b"), (2, "c")]


def test_prepare_import_counts_every_problem_and_lists_the_first(sqlite_settings):
    n = CAP + 500
    with pytest.raises(ImportValidationError) as caught:
        ingest.prepare_import(sqlite_settings, _jsonl(PAIR, *[b"1"] * n), filename="bad.jsonl")
    exc = caught.value
    assert exc.count == n and len(exc.problems) == CAP
    message = str(exc)
    assert message.startswith(f"{n:,} problems in bad.jsonl; nothing was imported.")
    assert message.count("\n  line ") == ingest.MAX_REPORTED
    assert message.endswith(f"  ... and {n - ingest.MAX_REPORTED:,} more")


def test_one_raters_answers_that_change_on_every_row_are_counted_not_kept(sqlite_settings):
    """A rater's other answer for a pair is a problem on each row that gives it: a file repeating two rows
    kept one each, whatever the file's length."""
    n = 2 * CAP + 50
    rows = [{**PAIR, "winner": "ab"[i % 2], "annotator": "r1"} for i in range(n)]
    parsed = ingest.parse_file(_jsonl(*rows), filename="x.jsonl")
    assert parsed.problem_count == n // 2 and len(parsed.problems) == CAP  # each 'b' row
    assert parsed.problems[0][0] == 2 and parsed.problems[-1][0] == 2 * CAP
    with pytest.raises(ImportValidationError) as caught:
        ingest.prepare_import(sqlite_settings, _jsonl(*rows), filename="x.jsonl")
    assert caught.value.count == n // 2 and len(caught.value.problems) == CAP


def test_gold_conflicts_are_counted_past_the_cap(sqlite_settings):
    rows = [{"prompt": f"p{i}", "response_a": "a", "response_b": "b", "winner": w}
            for i in range(CAP + 5) for w in "ab"]
    with pytest.raises(ImportValidationError) as caught:
        ingest.prepare_import(sqlite_settings, _jsonl(*rows), filename="x.jsonl", known_winner="gold")
    assert caught.value.count == CAP + 5 and len(caught.value.problems) == CAP
    assert caught.value.problems[0][0] == 2


@pytest.mark.parametrize("name, header, bad, row", [
    ("x.jsonl", b"", b"1", json.dumps(PAIR).encode()),
    ("x.csv", b"prompt,response_a,response_b\n", b"1", b"p,a,b"),
    ("x.json", b"[", b"1,", json.dumps(PAIR).encode() + b","),
], ids=["jsonl", "csv", "json"])
def test_reading_stops_at_the_problems_counted(monkeypatch, name, header, bad, row):
    """Past MAX_PROBLEMS_COUNTED problems the count is a lower bound and the file is read no further: every
    problem cost 2-4 us to find, and 200 MB of bad lines (a ~200 KB upload) are 100 million of them."""
    monkeypatch.setattr(ingest, "MAX_PROBLEMS_COUNTED", 50)
    first = 2 if name == "x.csv" else 1  # the line of the first row
    last = row.rstrip(b",") + (b"]" if name == "x.json" else b"")
    data = header + row + b"\n" + b"\n".join([bad] * 200) + b"\n" + last
    parsed = ingest.parse_file(data, filename=name)
    assert parsed.problem_count == 50 and len(parsed.problems) == 50 and not parsed.ok
    assert parsed.stopped_at == first + 50
    assert parsed.rows == (51 if name != "x.csv" else 1)  # the CSV's bad rows are refused before they are rows
    assert parsed.comparison_count == 1

    monkeypatch.setattr(ingest, "MAX_PROBLEMS_COUNTED", 201)  # one more than the file has: read to the end
    parsed = ingest.parse_file(data, filename=name)
    assert parsed.problem_count == 200 and parsed.stopped_at is None and parsed.comparison_count == 1


def test_an_import_stopped_at_the_problems_counted_says_at_least(monkeypatch, sqlite_settings):
    monkeypatch.setattr(ingest, "MAX_PROBLEMS_COUNTED", 2000)
    with pytest.raises(ImportValidationError) as caught:
        ingest.prepare_import(sqlite_settings, _jsonl(PAIR, *[b"1"] * 5000), filename="bad.jsonl")
    exc = caught.value
    assert exc.count == 2000 and len(exc.problems) == CAP
    assert str(exc).startswith("at least 2,000 problems in bad.jsonl (reading stopped at line 2,001); nothing was "
                               "imported.")
    assert str(exc).endswith(f"  ... and at least {2000 - ingest.MAX_REPORTED:,} more")

    with pytest.raises(ImportValidationError) as caught:
        ingest.parse_file(_jsonl(*[b"1"] * 5000), filename="bad.jsonl")
    assert str(caught.value).startswith("could not detect the file's format (reading stopped at line 2,000, after "
                                        "2,000 problems); accepted formats:")
    assert caught.value.count == 2000


def test_problems_message_counts_problems_it_does_not_list():
    listed = [(i, "bad") for i in range(1, 31)]
    message = ingest.problems_message(listed, "f.csv", count=300_000)
    assert message.startswith("300,000 problems in f.csv; nothing was imported.")
    assert message.endswith("  ... and 299,980 more")
    assert ingest.problems_message(listed[:2]).startswith("2 problems; nothing")
    assert "more" not in ingest.problems_message(listed[:2])
    many = ingest.problems_message(listed, count=ingest.MAX_PROBLEMS_COUNTED)
    assert many.startswith(f"at least {ingest.MAX_PROBLEMS_COUNTED:,} problems; nothing")
    assert many.endswith(f"  ... and at least {ingest.MAX_PROBLEMS_COUNTED - 20:,} more")


def test_notes_on_repeated_rows_name_the_first_lines_and_count_them_all():
    """Rows a note is about are counted with their first lines, not listed: a file repeating one row added
    each of its lines to every such list."""
    row = {"chosen": "\n\nHuman: hi\n\nAssistant: ", "rejected": "\n\nHuman: hi\n\nAssistant: no", "extra": 1}
    parsed = ingest.parse_file(_jsonl(*[row] * 25), filename="x.jsonl")
    assert parsed.ok
    notes = "\n".join(parsed.notes)
    assert "24 duplicate comparisons (lines 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ... (14 more)) repeat" in notes
    assert "25 HH rows have an empty response (lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ... (15 more))" in notes
    assert "ignored field(s) in 25 rows (lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ... (15 more)): 'extra'" in notes
    one = ingest.parse_file(_jsonl(row, row), filename="x.jsonl")
    assert "1 duplicate comparison (line 2) repeats an earlier row" in "\n".join(one.notes)


def _peak(call) -> int:
    tracemalloc.start()
    try:
        try:
            call()
        except ImportValidationError:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_bad_lines():
    """120,000 bad lines (a 200 KB upload's 200 MB would be 100 million): kept, their problems peaked at
    22 MB under tracemalloc, 13 MB above 40,000 lines; now the peak is the reading buffers and the first
    1,000, whatever the lines."""
    small = gzip.compress(b"1\n" * 40_000)
    large = gzip.compress(b"1\n" * 120_000)
    peak_small = _peak(lambda: ingest.parse_file(small, filename="x.jsonl.gz"))
    peak_large = _peak(lambda: ingest.parse_file(large, filename="x.jsonl.gz"))
    assert peak_large < 6 * 2**20, peak_large
    assert peak_large < peak_small + 2**19, (peak_small, peak_large)


def test_a_json_array_is_not_held_element_by_element():
    """A .json array was read whole into Python objects (and its lines into a list) to check its syntax
    first: 8 MB of "{}," lines took +906 MB. Its text is still read whole; its elements one at a time."""
    small, large = (b"[" + b"{},\n" * n + b"{}]" for n in (30_000, 120_000))
    peak_small = _peak(lambda: ingest.parse_file(small, filename="x.json"))
    peak_large = _peak(lambda: ingest.parse_file(large, filename="x.json"))
    assert peak_large < peak_small + 3 * 2**19, (peak_small, peak_large)  # the text: 360 KB more, twice


@pytest.mark.parametrize("rows", [
    # One rater's answers for a pair that change on every other row: a problem each (and a duplicate each).
    [{**PAIR, "winner": w, "annotator": "r1"} for w in "ab"],
    # A duplicate with an ignored field and an empty response, each in a note's list of lines.
    [{"chosen": "\n\nHuman: hi\n\nAssistant: ", "rejected": "\n\nHuman: hi\n\nAssistant: no", "x": 1}],
], ids=["rater-flips", "hh-repeats"])
def test_memory_does_not_grow_with_repeated_rows(rows):
    """A file repeating a few rows: the notes' lists of lines, and the problems of a rater's changing answers,
    grew with every row (by 0.7 and 3 MB from 2,000 rows to 16,000)."""
    small, large = (gzip.compress(_jsonl(*rows) * (n // len(rows))) for n in (2_000, 16_000))
    # keep_first, as the Import page parses: without it parse_file returns every comparison read.
    peak_small = _peak(lambda: ingest.parse_file(small, filename="x.jsonl.gz", keep_first=20))
    peak_large = _peak(lambda: ingest.parse_file(large, filename="x.jsonl.gz", keep_first=20))
    assert peak_large < peak_small + 2**18, (peak_small, peak_large)


def test_the_cli_says_how_many_problems_a_file_has(tmp_path, sqlite_url, monkeypatch, capsys):
    monkeypatch.setenv("PREFLOOP_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "data"))
    n = CAP + 77
    path = tmp_path / "ones.jsonl.gz"
    path.write_bytes(gzip.compress(b"1\n" * n))
    assert cli.main(["import", str(path)]) == 2
    err = capsys.readouterr().err
    assert "could not detect the file's format" in err
    assert "  line 1: a row must be a JSON object, not a number" in err
    assert f"  ... and {n - ingest.MAX_REPORTED:,} more" in err
    assert "nothing was imported" in err

    path = tmp_path / "some.jsonl"
    path.write_bytes(_jsonl(PAIR, *[b"1"] * n))
    assert cli.main(["import", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {n:,} problems in some.jsonl; nothing was imported." in err
    assert f"  ... and {n - ingest.MAX_REPORTED:,} more" in err


def test_the_import_page_lists_the_first_problems_and_counts_them(app_db, people, monkeypatch):
    """The page parses a file as soon as it is chosen: a file of bad lines, refused as a whole, put every
    problem in a table; one refused on Import (here as gold pairs given two answers) did too."""
    at = open_page(people[1], "admin_import.py")
    n = CAP + 345
    at.file_uploader(key="import_file").upload("ones.jsonl.gz", gzip.compress(b"1\n" * n), "application/gzip")
    at.run()
    assert not at.exception, at.exception
    assert "could not detect the file's format" in at.error[0].value
    assert any(c.value == f"{n:,} problems in all; the first 1,000 are listed." for c in at.caption), at.caption
    assert len(at.dataframe[0].value) == CAP

    monkeypatch.setattr(ingest, "MAX_PROBLEMS_COUNTED", CAP + 200)
    at.file_uploader(key="import_file").upload("some.jsonl", _jsonl(PAIR, *[b"1"] * n), "application/jsonl")
    at.run()
    assert not at.exception, at.exception
    assert at.error[0].value.startswith(f"At least {CAP + 200:,} problems found (reading stopped at line "
                                        f"{CAP + 201:,}); nothing can be imported"), at.error[0].value
    assert any(c.value == "The first 1,000 are listed." for c in at.caption)
    assert len(at.dataframe[0].value) == CAP

    rows = [{"prompt": f"p{i}", "response_a": "a", "response_b": "b", "winner": w}
            for i in range(CAP + 5) for w in "ab"]
    at.file_uploader(key="import_file").upload("split.jsonl", _jsonl(*rows), "application/jsonl")
    at.run()
    assert not at.exception and not at.error, (at.exception, at.error)
    at.selectbox(key="import_known_winner").select("gold")
    at.run()
    next(b for b in at.button if b.label == "Import").click()
    at.run()
    assert not at.exception, at.exception
    assert at.error[0].value.startswith(f"{CAP + 5:,} problems in split.jsonl; nothing was imported."), at.error
    assert any(c.value == f"{CAP + 5:,} problems in all; the first 1,000 are listed." for c in at.caption)
    assert len(at.dataframe[-1].value) == CAP
