"""Rows that give one comparison different known winners are kept as the file gives them, and noted.

A dogfood import of two rows for one pair, winner "a" and winner "b", said only "added 1 comparison ...
2 imported judgments": two opposing votes, so no majority, and the pair silently dropped out of the
preference exports. Identical repeats already had a note. Both answers stay (a file may hold several
people's labels, and picking one would hide the disagreement), and a note names the rows and says what
became of them. Rows that name their rater (``annotator``) are separate votes: tests/test_ingest_raters.py.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from annotate import cli, export, ingest
from annotate.errors import ImportValidationError
from annotate.ingest import import_file, parse_file
from annotate.models import Choice, Comparison, Judgment
from tests.test_ingest import admin, admin_import_page, hh, jsonl, pair

JUDGMENT_TAIL = ("each answer becomes one imported judgment, however many rows give it, so the pair has no "
                 "majority and preference exports leave it out until more votes settle it; rows that name "
                 "different raters ('annotator') would be separate votes")
PREVIEW_TAIL = f"{JUDGMENT_TAIL}; as gold pairs the file is refused (a gold pair needs one answer)"
ONE = "1 comparison is given different known winners by different rows (line 2 against line 1): "


def conflict_notes(parsed_or_report) -> list[str]:
    return [n for n in parsed_or_report.notes if "different known winners" in n]


def run_import(db, settings, data, **kwargs):
    with db.begin() as session:
        return import_file(session, settings, data, system=True, filename="c.jsonl", **kwargs)


def test_rows_that_disagree_on_a_pair_are_noted_with_their_lines():
    parsed = parse_file(jsonl(pair(1, winner="a"), pair(1, winner="b")), filename="c.jsonl")
    assert parsed.problems == [] and len(parsed.comparisons) == 2
    assert parsed.notes == [ONE + PREVIEW_TAIL]


def test_a_repeat_of_either_answer_is_a_duplicate_and_the_note_names_the_first_row_that_differs():
    rows = [pair(1, winner="a"), pair(2, winner="a"), pair(1, winner="b"), pair(1, winner="a"),
            pair(1, winner="tie"), pair(2, winner="a")]
    notes = parse_file(jsonl(*rows), filename="c.jsonl").notes
    assert notes == [  # one comparison (it said 2: one for each answer after the first)
        "2 duplicate comparisons (lines 4, 6) repeat earlier rows and are imported once",
        "1 comparison is given different known winners by different rows (line 3 against line 1; line 5 "
        f"against line 1): {PREVIEW_TAIL}"]


def test_a_row_without_a_winner_disagrees_with_nothing():
    for rows in ([pair(1), pair(1, winner="a")], [pair(1, winner="a"), pair(1)], [pair(1, winner="a")] * 2):
        assert conflict_notes(parse_file(jsonl(*rows), filename="c.jsonl")) == []


def test_disagreement_is_found_in_canonical_order_in_every_format():
    swapped = {"prompt": "prompt 1", "response_a": "answer 1 b", "response_b": "answer 1 a", "winner": "a"}
    same_pair_flipped = [pair(1, winner="a"), swapped]  # B wins in the first row's terms
    agreeing = [pair(1, winner="a"), {**swapped, "winner": "b"}]
    trl = [{"prompt": "q", "chosen": "x", "rejected": "y"}, {"prompt": "q", "chosen": "y", "rejected": "x"}]
    hh_rows = [hh("\n\nHuman: q", "x", "y"), hh("\n\nHuman: q", "y", "x")]
    for rows in (same_pair_flipped, trl, hh_rows):
        parsed = parse_file(jsonl(*rows), filename="c.jsonl")
        assert conflict_notes(parsed) == [ONE + PREVIEW_TAIL], rows
    assert conflict_notes(parse_file(jsonl(*agreeing), filename="c.jsonl")) == []


def test_kwise_rows_name_each_pair_of_rows_once_and_count_comparisons():
    first = {"prompt": "p", "responses": ["x", "y", "z"],
             "comparisons": [{"a": 0, "b": 1, "winner": "a"}, {"a": 0, "b": 2, "winner": "a"}]}
    second = {"prompt": "p", "responses": ["x", "y", "z"],
              "comparisons": [{"a": 1, "b": 0, "winner": "a"}, {"a": 2, "b": 0, "winner": "a"}]}
    [note] = conflict_notes(parse_file(jsonl(first, second), filename="k.jsonl"))
    assert note.startswith("2 comparisons are given different known winners by different rows "
                           "(line 2 against line 1): ")


def test_the_note_lists_the_first_five_places_and_counts_the_rest():
    rows = [pair(i, winner=w) for i in range(1, 8) for w in ("a", "b")]
    [note] = conflict_notes(parse_file(jsonl(*rows), filename="c.jsonl"))
    assert note.startswith("7 comparisons are given different known winners by different rows (line 2 against "
                           "line 1; line 4 against line 3; line 6 against line 5; line 8 against line 7; line 10 "
                           "against line 9; ... (2 more)): ")


def test_the_import_keeps_both_votes_and_says_so(db, settings):
    report = run_import(db, settings, jsonl(pair(1, winner="a"), pair(1, winner="b"), pair(1, winner="a")),
                        overlap=3)
    assert (report.comparisons_added, report.judgments_added) == (1, 2)
    assert conflict_notes(report) == [ONE + JUDGMENT_TAIL]
    assert "1 duplicate comparison (line 3) repeats an earlier row and is imported once" in report.notes
    assert ONE + JUDGMENT_TAIL in report.summary().split("\n")
    with db.begin() as session:
        boss = admin(session)
        assert sorted(j.choice.value for j in session.scalars(select(Judgment))) == ["a", "b"]
        # What the note says: no majority, so the preference export leaves the pair out.
        assert export.preference_rows(session, actor=boss) == []


def test_ignored_known_winners_are_noted_as_ignored(db, settings):
    report = run_import(db, settings, jsonl(pair(1, winner="a"), pair(1, winner="b")), known_winner="ignore")
    assert report.judgments_added == 0
    assert conflict_notes(report) == [ONE + "known winners are ignored, so it is imported without one"]


def test_gold_still_refuses_disagreeing_rows(db, settings):
    with pytest.raises(ImportValidationError, match="a gold pair needs one answer"):
        run_import(db, settings, jsonl(pair(1, winner="a"), pair(1, winner="b")), known_winner="gold")
    with db.read() as session:
        assert session.scalar(select(Comparison)) is None


def test_cli_import_prints_the_note(tmp_path, sqlite_url, monkeypatch, capsys):
    monkeypatch.setenv("PREFLOOP_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "data"))
    path = tmp_path / "c.jsonl"
    path.write_bytes(jsonl(pair(1, winner="a"), pair(1, winner="b")))
    assert cli.main(["import", str(path), "--overlap", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("pairs: 2 rows; added 1 comparison") and "2 imported judgments" in out[0]
    assert ONE + JUDGMENT_TAIL in out


def test_admin_import_page_shows_the_note_in_the_preview_and_the_summary(sqlite_url, tmp_path, monkeypatch):
    at = admin_import_page(sqlite_url, tmp_path, monkeypatch)
    at.file_uploader(key="import_file").upload("c.jsonl", jsonl(pair(1, winner="a"), pair(1, winner="b")),
                                               "application/jsonl")
    at.run()
    assert ONE + PREVIEW_TAIL in [i.value for i in at.info]
    next(b for b in at.button if b.label == "Import").click()
    at.run()
    assert not at.exception, at.exception
    (summary,) = [s.value for s in at.success]
    assert "2 imported judgments" in summary and ONE + JUDGMENT_TAIL in summary


# --------------------------------------------------------------------------- elements of a one-line array


def test_elements_of_a_one_line_array_are_named_in_problems():
    """`[{...}, "oops", 5]` on one line reported "line 1: a row must be a JSON object" twice."""
    data = json.dumps([pair(1), "oops", 5]).encode()
    parsed = parse_file(data, filename="a.json")
    assert parsed.problems == [(1, "element 2: a row must be a JSON object, not a string"),
                               (1, "element 3: a row must be a JSON object, not a number")]
    assert ingest.problems_message(parsed.problems, "a.json").split("\n")[1:] == [
        "  line 1, element 2: a row must be a JSON object, not a string",
        "  line 1, element 3: a row must be a JSON object, not a number"]


def test_every_row_problem_and_the_strict_json_check_name_the_element():
    data = ('[' + json.dumps(pair(1)) + ', {"prompt": "q", "response_a": "x"}, '
            '{"prompt": "q", "response_a": "x", "response_b": NaN}, {"chosen": "c", "rejected": "r", "prompt": "q"}]'
            ).encode()
    parsed = parse_file(data, filename="a.json")
    assert parsed.problems == [
        (1, "element 2: missing field 'response_b'"),
        (1, "element 3: invalid JSON (NaN is not a JSON number; write null or a string)"),
        (1, "element 4: row looks like trl but earlier rows are pairs; one file must use one format")]


def test_a_pretty_printed_array_keeps_plain_lines_and_only_shared_lines_name_elements():
    pretty = json.dumps([pair(1), "oops", 5], indent=2).encode()
    assert parse_file(pretty, filename="a.json").problems == [
        (7, "a row must be a JSON object, not a string"), (8, "a row must be a JSON object, not a number")]
    # One element a line, then two on line 3 (numbered by their place in the whole array).
    mixed = ("[\n" + json.dumps(pair(1)) + ",\n" + '"oops", 5,\n' + '"last"\n]').encode()
    parsed = parse_file(mixed, filename="a.json")
    assert parsed.problems == [(3, "element 2: a row must be a JSON object, not a string"),
                               (3, "element 3: a row must be a JSON object, not a number"),
                               (4, "a row must be a JSON object, not a string")]
    message = ingest.problems_message(parsed.problems)
    assert "  line 3, element 3: a row" in message and "  line 4: a row must" in message


def test_notes_on_a_one_line_array_name_elements_or_each_line_once():
    rows = [pair(1, winner="a", extra=1), pair(2, extra=1), pair(1, winner="b"), pair(2)]
    notes = parse_file(json.dumps(rows).encode(), filename="a.json").notes
    assert "ignored field(s) in 2 rows (line 1): 'extra' (2 rows)" in notes  # was "(lines 1, 1)"
    assert "1 duplicate comparison (line 1) repeats an earlier row and is imported once" in notes
    [note] = [n for n in notes if "different known winners" in n]
    assert note.startswith("1 comparison is given different known winners by different rows "
                           "(line 1, element 3 against line 1, element 1): ")
