"""Multi-rater imports: the ``annotator`` who gave a row's known winner keeps their vote.

Imported judgments were one per comparison and answer, so a file where three people answered one pair
a, a and b stored one ``a`` and one ``b``, and the preference export found no majority. A row's
``annotator`` (in every format with a known winner) is stored as ``Judgment.external_annotator``: one live
imported judgment per comparison and rater, a rater's repeat adds nothing and their changed answer in a
later import supersedes the earlier one. Rows without it behave as before (tests/test_ingest_conflicts.py).
"""

from __future__ import annotations

import csv
import io
import json

import pyarrow.parquet as pq
import pytest
from sqlalchemy import event, func, select

from annotate import export, ingest
from annotate.accounts import Actor
from annotate.errors import ImportValidationError
from annotate.export import ExportFilter
from annotate.ingest import parse_file
from annotate.models import Choice, Comparison, Judgment, JudgmentSource, JudgmentState, User, utcnow
from tests.test_ingest import USER, admin, hh, jsonl, pair, run_import


def boss(session) -> Actor:
    """The admin 'boss', created the first time."""
    user = session.scalar(select(User).where(User.username == "boss"))
    return admin(session) if user is None else Actor(id=user.id, username=user.username, role=user.role)


def preferences(db, **filters) -> list[dict]:
    with db.begin() as session:
        return export.preference_rows(session, actor=boss(session), filters=ExportFilter(**filters))


def stored(db) -> list[tuple]:
    """Every judgment as (external_annotator, choice, state, supersedes_id, id), in id order."""
    with db.read() as session:
        return [(j.external_annotator, j.choice.value, j.state.value, j.supersedes_id, j.id)
                for j in session.scalars(select(Judgment).order_by(Judgment.id))]


def note_with(report_or_parsed, text: str) -> list[str]:
    return [n for n in report_or_parsed.notes if text in n]


# --------------------------------------------------------------------------- parsing (no database)


def test_every_format_with_a_known_winner_reads_the_annotator():
    kwise = {"prompt": "p", "responses": ["x", "y", "z"], "annotator": "row-rater",
             "comparisons": [{"a": 0, "b": 1, "winner": "a", "annotator": "r1"},
                             {"a": 1, "b": 0, "winner": "a", "annotator": "r2"},  # the same pair, r2: y won
                             {"a": 0, "b": 2, "winner": "tie"}]}  # the row's rater
    cases = {
        "pairs": [pair(1, winner="a", annotator="r1")],
        "trl": [{"prompt": "q", "chosen": "x", "rejected": "y", "annotator": "r1"},
                {"prompt": [USER], "chosen": [{"role": "assistant", "content": "x"}],
                 "rejected": [{"role": "assistant", "content": "y"}], "annotator": 7}],  # a number, as its digits
        "hh": [{**hh("\n\nHuman: q", "x", "y"), "annotator": "r1"}],
    }
    for fmt, rows in cases.items():
        parsed = parse_file(jsonl(*rows), filename="r.jsonl")
        assert parsed.format == fmt and parsed.problems == [], parsed.problems
        assert [c.annotator for c in parsed.comparisons] == ["r1", "7"][:len(rows)], fmt
        assert not [n for n in parsed.notes if n.startswith("ignored field")], parsed.notes
    parsed = parse_file(jsonl(kwise), filename="k.jsonl")
    assert parsed.problems == [] and not [n for n in parsed.notes if n.startswith("ignored field")]
    got = sorted((c.response_a, c.response_b, c.annotator, c.winner and c.winner.value) for c in parsed.comparisons)
    assert got == [("x", "y", "r1", "a"), ("x", "y", "r2", "b"), ("x", "z", "row-rater", "tie"),
                   ("y", "z", None, None)]  # a pair no one judged names no rater
    csv_file = b"prompt,response_a,response_b,winner,annotator\nq,x,y,a,r1\nq,x,y,b,\n"
    assert [c.annotator for c in parse_file(csv_file, filename="r.csv").comparisons] == ["r1", None]


def test_a_misspelt_annotator_is_named_and_a_bad_one_is_a_problem():
    parsed = parse_file(jsonl(pair(1, winner="a", annotater="r1")), filename="r.jsonl")
    assert parsed.comparisons[0].annotator is None
    assert ("ignored field(s) in 1 row (line 1): 'annotater' (1 row; did you mean 'annotator'?)" in parsed.notes)
    kwise = {"prompt": "p", "responses": ["x", "y"], "comparisons": [{"a": 0, "b": 1, "winner": "a", "rater": "r"}]}
    assert ("ignored field(s) in 1 row (line 1): 'comparisons[].rater' (1 row)"
            in parse_file(jsonl(kwise), filename="k.jsonl").notes)
    bad = [pair(1, winner="a", annotator="r" * 257), pair(2, winner="a", annotator="r\u00001"),
           pair(3, winner="a", annotator=["r1"]),
           {"prompt": "p", "responses": ["x", "y"], "comparisons": [{"a": 0, "b": 1, "winner": "a", "annotator": {}}]},
           {"prompt": "p", "responses": ["x", "y"], "annotator": "r1",
            "comparisons": [{"a": 0, "b": 1, "winner": "a"}, {"a": 1, "b": 0, "winner": "a"}]}]
    problems = [parse_file(jsonl(row), filename="r.jsonl").problems for row in bad]
    assert problems == [
        [(1, "'annotator' is longer than 256 characters")],
        [(1, "'annotator' contains a NUL character (\\u0000) at character 2, which PostgreSQL cannot store; "
             "remove it")],
        [(1, "'annotator' must be a string")],
        [(1, "comparisons[0].annotator must be a string")],
        [(1, "comparisons[1] contradicts an earlier outcome by annotator 'r1' for responses 0 and 1")]]


# --------------------------------------------------------------------------- votes through the export


def _three_raters(fmt: str) -> list[dict]:
    """Three raters answer one pair: r1 and r2 prefer 'better', r3 'worse'."""
    if fmt == "pairs":
        return [{"prompt": "q", "response_a": "better", "response_b": "worse", "winner": w, "annotator": r}
                for r, w in (("r1", "a"), ("r2", "a"), ("r3", "b"))]
    if fmt == "trl":
        return [{"prompt": "q", "chosen": c, "rejected": x, "annotator": r}
                for r, c, x in (("r1", "better", "worse"), ("r2", "better", "worse"), ("r3", "worse", "better"))]
    if fmt == "hh":
        return [{**hh("\n\nHuman: q", c, x), "annotator": r}
                for r, c, x in (("r1", "better", "worse"), ("r2", "better", "worse"), ("r3", "worse", "better"))]
    return [{"prompt": "q", "responses": ["better", "worse"], "annotator": "r1",
             "comparisons": [{"a": 0, "b": 1, "winner": "a"}, {"a": 1, "b": 0, "winner": "b", "annotator": "r2"},
                             {"a": 0, "b": 1, "winner": "b", "annotator": "r3"}]}]


@pytest.mark.parametrize("fmt", ["pairs", "trl", "hh", "kwise"])
def test_three_raters_a_a_b_export_the_majority_with_agreement_two_thirds(db, settings, fmt):
    report = run_import(db, settings, jsonl(*_three_raters(fmt)), overlap=3)
    assert (report.comparisons_added, report.judgments_added) == (1, 3)
    assert note_with(report, "from 3 raters") == [
        "3 known winners come from 3 raters ('annotator'): each rater's answer to a pair is a vote of its own, "
        "one imported judgment"]
    assert sorted((r, c) for r, c, *_ in stored(db)) in ([("r1", "a"), ("r2", "a"), ("r3", "b")],
                                                         [("r1", "b"), ("r2", "b"), ("r3", "a")])  # A/B by hash
    with db.read() as session:
        comparison = session.scalar(select(Comparison))
        assert (comparison.judgment_count, comparison.status.value) == (3, "complete")
    [row] = preferences(db)
    chosen = row["chosen"] if isinstance(row["chosen"], str) else row["chosen"][0]["content"]
    assert (chosen, row["n_judgments"], row["agreement"]) == ("better", 3, pytest.approx(2 / 3))


def test_reimporting_the_same_rows_adds_nothing_and_rows_without_a_rater_are_votes_apart(db, settings):
    data = jsonl(*_three_raters("pairs"), {"prompt": "q", "response_a": "better", "response_b": "worse",
                                          "winner": "a"})
    first = run_import(db, settings, data, overlap=5)
    assert first.judgments_added == 4  # three raters, and the answer of a row that names none
    again = run_import(db, settings, data)
    swapped = run_import(db, settings, jsonl({"prompt": "q", "response_a": "worse", "response_b": "better",
                                              "winner": "b", "annotator": "r1"}))  # r1's answer, sides swapped
    assert (again.judgments_added, again.comparisons_existing, swapped.judgments_added) == (0, 1, 0)
    assert not note_with(again, "replace")
    assert [(r, c, s) for r, c, s, *_ in stored(db)] == [
        (None, "a", "active"), ("r1", "a", "active"), ("r2", "a", "active"), ("r3", "b", "active")]
    with db.read() as session:
        assert session.scalar(select(Comparison.judgment_count)) == 4


def test_a_raters_changed_answer_in_a_later_import_supersedes_theirs_and_until_gives_the_old_one(db, settings):
    run_import(db, settings, jsonl(*_three_raters("pairs")), overlap=3)
    [before] = preferences(db)
    assert (before["chosen"], before["agreement"]) == ("better", pytest.approx(2 / 3))
    between = utcnow()
    # r1 changes their mind; the file gives the pair the other way round (winner "a" is 'worse').
    changed = run_import(db, settings, jsonl({"prompt": "q", "response_a": "worse", "response_b": "better",
                                              "winner": "a", "annotator": "r1"}))
    assert (changed.comparisons_existing, changed.judgments_added) == (1, 1)
    assert note_with(changed, "replace") == [
        "1 imported judgment replaces the answer the same rater ('annotator') gave the pair in an earlier import, "
        "now superseded"]
    (r1_old, r2, r3, r1_new) = stored(db)
    assert r1_old[:3] == ("r1", "a", "superseded") and r1_new[:4] == ("r1", "b", "active", r1_old[4])
    assert [r2[2], r3[2]] == ["active", "active"]
    with db.read() as session:
        comparison = session.scalar(select(Comparison))
        assert comparison.judgment_count == 3  # a vote replaced, not added
        sources = set(session.scalars(select(Judgment.source)))
        assert sources == {JudgmentSource.imported}
        live = session.scalar(select(func.count()).select_from(Judgment).where(
            Judgment.state == JudgmentState.active, Judgment.external_annotator == "r1"))
        assert live == 1
    [now] = preferences(db)
    assert (now["chosen"], now["n_judgments"], now["agreement"]) == ("worse", 3, pytest.approx(2 / 3))
    [then] = preferences(db, until=between)
    assert (then["chosen"], then["n_judgments"], then["agreement"]) == ("better", 3, pytest.approx(2 / 3))
    # And back again: the superseding row is superseded in turn, once.
    assert run_import(db, settings, jsonl(_three_raters("pairs")[0])).judgments_added == 1
    assert [s for _, _, s, *_ in stored(db)] == ["superseded", "active", "active", "superseded", "active"]


def test_one_rater_giving_one_pair_two_answers_in_a_file_is_a_problem_naming_both_lines(db, settings):
    rows = [pair(1, winner="a", annotator="r1"), pair(1, winner="a", annotator="r2"),
            pair(1, winner="b", annotator="r1"), pair(1, winner="a", annotator="r1")]  # line 4 repeats line 1
    problem = (3, "annotator 'r1' gives this pair another winner than on line 1; a rater has one answer per "
                  "pair: keep the row with the final one (importing another answer later replaces theirs)")
    assert parse_file(jsonl(*rows), filename="r.jsonl").problems == [problem]
    for known_winner in ("judgment", "ignore"):
        with pytest.raises(ImportValidationError) as refused:
            run_import(db, settings, jsonl(*rows), known_winner=known_winner)
        assert refused.value.problems == [problem]
        assert "line 3: annotator 'r1' gives this pair another winner than on line 1" in str(refused.value)
    kwise = [{"prompt": "p", "responses": ["x", "y", "z"], "annotator": "r1",
              "comparisons": [{"a": 0, "b": 1, "winner": "a"}]},
             {"prompt": "p", "responses": ["x", "y", "z"], "annotator": "r1",
              "comparisons": [{"a": 0, "b": 1, "winner": "b"}, {"a": 0, "b": 2, "winner": "b"}]}]
    [(line, reason)] = parse_file(jsonl(*kwise), filename="k.jsonl").problems
    assert (line, reason.split(";")[0]) == (2, "annotator 'r1' gives a pair of this row another winner than on line 1")
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Comparison)) == 0  # all-or-nothing


def test_gold_ignores_the_rater_and_still_refuses_a_pair_given_two_answers(db, settings):
    for rows in ([pair(1, winner="a", annotator="r1"), pair(1, winner="b", annotator="r2")],
                 [pair(1, winner="a", annotator="r1"), pair(1, winner="b", annotator="r1")]):
        with pytest.raises(ImportValidationError) as refused:
            run_import(db, settings, jsonl(*rows), known_winner="gold")
        assert refused.value.problems == [  # the gold refusal alone, not the rater's
            (2, "conflicting known outcomes for the same pair (lines 1, 2); a gold pair needs one answer")]
    report = run_import(db, settings, jsonl(pair(1, winner="b", annotator="r1"), pair(1, winner="b", annotator="r2")),
                        known_winner="gold")
    assert (report.gold_added, report.judgments_added) == (1, 0)
    assert note_with(report, "raters") == ["2 known winners come from 2 raters ('annotator'): a gold pair has one "
                                           "answer, whoever gave it, so the raters are not stored"]
    with db.read() as session:
        assert session.scalar(select(Comparison.gold_choice)) is Choice.b
        assert session.scalar(select(func.count()).select_from(Judgment)) == 0


def test_the_notes_say_rows_naming_different_raters_are_separate_votes(db, settings):
    votes = [pair(1, winner="a", annotator="r1"), pair(1, winner="b", annotator="r2")]
    parsed = parse_file(jsonl(*votes), filename="r.jsonl")
    assert parsed.notes == [
        "1 comparison is given different known winners by different rows (line 2 against line 1): the rows name "
        "different raters ('annotator'), so each is a vote of its own and preference exports take the majority "
        "(leaving out a pair without one until more votes settle it); as gold pairs the file is refused (a gold "
        "pair needs one answer)",
        "2 known winners come from 2 raters ('annotator'): each rater's answer to a pair is a vote of its own, one "
        "imported judgment (with known winners ignored or made gold answers, the raters are not stored)"]
    mixed = parse_file(jsonl(*votes, pair(2, winner="a"), pair(2, winner="b")), filename="r.jsonl")
    [note] = [n for n in mixed.notes if "different known winners" in n]
    assert note == ("2 comparisons are given different known winners by different rows (line 2 against line 1; "
                    "line 4 against line 3): rows that name different raters ('annotator') are separate votes, "
                    "and of rows that name none each answer becomes one imported judgment, however many rows give "
                    "it; preference exports leave out a pair without a majority until more votes settle it; as "
                    "gold pairs the file is refused (a gold pair needs one answer)")
    # Three raters, three answers: one comparison, though two rows bring an answer not given before.
    three = parse_file(jsonl(*votes, pair(1, winner="tie", annotator="r3")), filename="r.jsonl")
    assert [n for n in three.notes if n.startswith("1 comparison is given different known winners by different "
                                                   "rows (line 2 against line 1; line 3 against line 1)")]
    report = run_import(db, settings, jsonl(*votes), overlap=3)
    assert report.judgments_added == 2
    assert note_with(report, "different known winners")[0].endswith(
        "preference exports take the majority (leaving out a pair without one until more votes settle it)")
    assert preferences(db) == []  # one vote each: no majority


# --------------------------------------------------------------------------- both write paths, raw export


def test_the_rater_goes_in_by_copy_on_postgresql_and_by_insert_on_sqlite(db, settings, monkeypatch):
    """Each backend's bulk write carries external_annotator and supersedes_id, over several batches."""
    monkeypatch.setattr(ingest, "_COPY_BATCH", 7)
    monkeypatch.setattr(ingest, "_INSERT_BATCH", 7)
    statements = []
    event.listen(db.engine, "before_cursor_execute", lambda conn, cur, statement, *a: statements.append(statement))
    rows = [pair(i, winner="a", annotator=f"rater {i % 3}\t\\N") for i in range(20)]
    assert run_import(db, settings, jsonl(*rows)).judgments_added == 20
    assert run_import(db, settings, jsonl(*[{**r, "winner": "b"} for r in rows[:9]])).judgments_added == 9
    judgment_inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT INTO JUDGMENTS")]
    if db.dialect == "postgresql":  # COPY runs on the driver's cursor, which SQLAlchemy's events do not see
        assert not judgment_inserts
    else:
        assert judgment_inserts and all("external_annotator" in s for s in judgment_inserts)
    got = stored(db)
    assert len(got) == 29 and {r for r, *_ in got} == {"rater 0\t\\N", "rater 1\t\\N", "rater 2\t\\N"}
    by_id = {j[4]: j for j in got}
    replaced = [j for j in got if j[3] is not None]
    assert len(replaced) == 9 and all(by_id[j[3]][2] == "superseded" and by_id[j[3]][0] == j[0] for j in replaced)


def test_the_raw_export_has_the_rater_in_every_format(db, settings):
    run_import(db, settings, jsonl(pair(1, winner="a", annotator="=r1"), pair(2, winner="b")), overlap=2)
    with db.begin() as session:
        actor = boss(session)
        rows = export.judgment_rows(session, actor=actor)
        files = {fmt: export.judgments_bytes(session, actor=actor, format=fmt) for fmt in ("csv", "jsonl", "parquet")}
    assert list(export.JUDGMENT_FIELDS).index("external_annotator") == list(export.JUDGMENT_FIELDS).index(
        "annotator") + 1
    assert [(r["annotator"], r["external_annotator"]) for r in rows] == [(None, "=r1"), (None, None)]
    reader = list(csv.DictReader(io.StringIO(files["csv"].decode())))
    assert [r["external_annotator"] for r in reader] == ["'=r1", ""]  # a formula is quoted, as every text cell
    assert [json.loads(line)["external_annotator"] for line in files["jsonl"].splitlines()] == ["=r1", None]
    table = pq.read_table(io.BytesIO(files["parquet"]))
    assert str(table.schema.field("external_annotator").type) == "string"
    assert table.column("external_annotator").to_pylist() == ["=r1", None]


# --------------------------------------------------------------------------- found by a browser dogfood run


def _rated(i: int, *answers: str, **extra) -> list[dict]:
    return [pair(i, winner=w, annotator=f"r{n}", **extra) for n, w in enumerate(answers, 1)]


def _comparisons(db) -> list[tuple[str, int, int]]:
    with db.read() as session:
        return [(c.status.value, c.overlap_target, c.judgment_count)
                for c in session.scalars(select(Comparison).order_by(Comparison.id))]


def test_importing_an_older_file_again_keeps_the_raters_later_answers(db, settings):
    """Import v1, then v2 (r2 changes an answer), then v1 again (to raise its overlap, as a note advises):
    v1's old answer superseded r2's correction without a word, and the export went back to it."""
    v1 = jsonl(*_rated(0, "a", "a", "b"))
    v2 = jsonl(*_rated(0, "a", "b", "b"))
    run_import(db, settings, v1)
    run_import(db, settings, v2)
    assert [row["agreement"] for row in preferences(db)] == [pytest.approx(2 / 3)]  # b, a and b
    report = run_import(db, settings, v1, overlap=4)
    assert report.judgments_added == 0
    assert note_with(report, "later import") == [
        "1 answer in this file differs from what the same rater ('annotator') gave the pair in a later import; "
        "this file was imported before (batch 1), so the later answer stays (a new file with a rater's answer "
        "replaces theirs)"]
    live = [(rater, choice) for rater, choice, state, *_ in stored(db) if state == "active"]
    assert sorted(live) == [("r1", "a"), ("r2", "b"), ("r3", "b")]
    assert _comparisons(db) == [("open", 4, 3)]  # the overlap still rises


def test_pairs_the_raters_split_evenly_need_one_more_judgment(db, settings):
    """A 1-1 split meets overlap 1 (or 2) but has no majority, so the preference export leaves it out "until
    more votes settle it": no vote ever came, as the pair was complete. Now it asks for one more, up to the
    campaign's maximum overlap (3 by default), as adaptive overlap does when annotators disagree."""
    data = jsonl(*_rated(0, "a", "b"), *_rated(1, "a", "a"), *_rated(2, "a", "b", "tie"), pair(3, winner="a"))
    report = run_import(db, settings, data)
    assert _comparisons(db) == [("open", 3, 2), ("complete", 1, 2), ("complete", 1, 3), ("complete", 1, 1)]
    assert note_with(report, "no majority") == [
        "1 new comparison has no majority among the file's answers (raters split evenly): it needs one more "
        "judgment, as adaptive overlap asks when annotators disagree, so annotators will see it"]
    # The advice for the pairs complete on import counts their votes, not the overlap: 3 at most here.
    [note] = note_with(report, "already have")
    assert note.startswith("3 new comparisons already have the 1 judgment they need")
    assert "import the file again with a higher overlap (more than 3 judgments:" in note


def test_the_preview_counts_distinct_pairs_and_their_votes():
    """180 rows of 60 pairs × 3 raters said "180 comparisons", "180 of the 180 have a known winner"."""
    parsed = parse_file(jsonl(*_rated(0, "a", "a", "b"), *_rated(1, "a", "b"), pair(2), pair(2)))
    assert (parsed.rows, parsed.comparison_count, parsed.known_count) == (7, 3, 2)
    assert parsed.votes == {(3, True): 1, (2, False): 1}


def test_rater_ids_lose_surrounding_spaces():
    """"  r3 " was a rater of its own, shown as "(imported, rater   r3 )"."""
    parsed = parse_file(jsonl(pair(0, winner="a", annotator="  r3 "), pair(1, winner="a", annotator="r3"),
                              pair(2, winner="b", annotator="   ")))
    assert [c.annotator for c in parsed.comparisons] == ["r3", "r3", None]
    assert note_with(parsed, "raters") and note_with(parsed, "from 1 rater")


def test_import_page_warns_when_raters_votes_meet_a_higher_overlap(sqlite_url, tmp_path, monkeypatch):
    """Three raters per pair imported at overlap 3: every pair complete, and the page said nothing (it warned
    only at overlap 1)."""
    from tests.test_ingest import admin_import_page

    at = admin_import_page(sqlite_url, tmp_path, monkeypatch)
    at.file_uploader(key="import_file").upload("r.jsonl", jsonl(*_rated(0, "a", "a", "b"), *_rated(1, "b", "b", "b")),
                                               "application/jsonl")
    at.run()
    at.number_input(key="import_overlap").set_value(3)
    at.run()
    [said] = [i.value for i in at.info if "annotators will not see" in i.value]
    assert said.startswith("2 of the 2 comparisons have as many known answers (up to 3, one per rater) as "
                           "overlap 3 asks for."), said
    assert "or an overlap above 3, before importing" in said
    at.number_input(key="import_overlap").set_value(4)
    at.run()
    assert not [i.value for i in at.info if "annotators will not see" in i.value]
    # At overlap 1 (maximum 3), three votes settled and three split 1-1-1 alike meet it: 3 pairs, not 2.
    at.file_uploader(key="import_file").upload("s.jsonl", jsonl(*_rated(0, "a", "a", "b"), *_rated(1, "b", "b", "b"),
                                                                *_rated(2, "a", "b", "tie")), "application/jsonl")
    at.run()
    at.number_input(key="import_overlap").set_value(1)
    at.run()
    [said] = [i.value for i in at.info if "annotators will not see" in i.value]
    assert said.startswith("3 of the 3 comparisons have as many known answers (up to 3, one per rater)"), said


def _pair_state(db) -> tuple[str, int, int]:
    with db.read() as session:
        c = session.scalar(select(Comparison))
        return c.status.value, c.overlap_target, c.judgment_count


def test_a_later_file_that_splits_a_pairs_votes_evenly_asks_for_one_more_judgment(db, settings):
    """A new pair whose raters split evenly needs one more judgment (up to the maximum overlap); a pair already
    here that a later file's answers split stayed complete, out of the queue, with no majority to export."""
    run_import(db, settings, jsonl(pair(1, winner="a", annotator="r1")))
    assert _pair_state(db) == ("complete", 1, 1)
    report = run_import(db, settings, jsonl(pair(1, winner="b", annotator="r2")))  # a rater added: 1-1
    assert _pair_state(db) == ("open", 3, 2)  # one more than it has (the campaign's maximum overlap is 3)
    assert ("1 comparison already here has no majority once this file's answers are in (votes split evenly): it "
            "needs one more judgment, as adaptive overlap asks when annotators disagree, so annotators will see "
            "it") in report.notes
    assert not [n for n in report.notes if "waiting for annotators" in n]  # not "closed" by the file either
    report = run_import(db, settings, jsonl(pair(1, winner="a", annotator="r3")))  # settled 2-1: complete
    assert _pair_state(db) == ("complete", 3, 3)
    assert not [n for n in report.notes if "no majority" in n]


def test_a_raters_changed_answer_that_splits_the_votes_asks_for_one_more(db, settings):
    run_import(db, settings, jsonl(pair(1, winner="a", annotator="r1"), pair(1, winner="a", annotator="r2")))
    assert _pair_state(db) == ("complete", 1, 2)
    run_import(db, settings, jsonl(pair(1, winner="b", annotator="r2")))  # r2's answer replaced: 1-1
    assert _pair_state(db) == ("open", 3, 2)


def test_split_votes_past_the_maximum_overlap_or_on_gold_pairs_stay_as_they_are(db, settings):
    three = [pair(1, winner=w, annotator=f"r{i}") for i, w in enumerate("aab")]
    run_import(db, settings, jsonl(*three))
    report = run_import(db, settings, jsonl(pair(1, winner="b", annotator="r9")))  # 2-2, but 4 >= max overlap 3
    assert _pair_state(db) == ("complete", 1, 4)
    assert not [n for n in report.notes if "no majority" in n]
    run_import(db, settings, jsonl(pair(2, winner="a")), known_winner="gold")
    run_import(db, settings, jsonl(pair(2, winner="b", annotator="r1")))
    with db.read() as session:
        gold = session.scalar(select(Comparison).where(Comparison.is_gold.is_(True)))
        assert (gold.status.value, gold.overlap_target) == ("open", 1)


def test_the_export_filters_imported_raters(db, settings):
    """Imported raters are not accounts: the annotator filter refused them, and only the raw export's column told
    their votes apart. The rater filter chooses them; with annotators chosen too, both count."""
    import dataclasses

    from annotate import judgments, queue
    from annotate.campaign import get_options
    from annotate.errors import NotFound, PrefloopError
    from tests.factories import make_user

    settings = dataclasses.replace(settings, gold_rate=0.0, probe_rate=0.0)
    run_import(db, settings, jsonl(*_three_raters("pairs")), overlap=4)  # r1, r2: better; r3: worse
    with db.begin() as session:
        ann = make_user(session, "ann")
    with db.begin() as session:
        served = queue.next_comparison(session, settings, get_options(session, settings), actor=ann)
        judgments.submit(session, settings, actor=ann, comparison_id=served.comparison_id,
                         shown="left" if served.left_text == "worse" else "right")

    def exported(**filters) -> tuple[str, int]:
        [row] = preferences(db, **filters) or [{"chosen": None, "n_judgments": 0}]
        return row["chosen"], row["n_judgments"]

    assert exported() == (None, 0)  # 2-2: no majority
    assert exported(raters=("r3",)) == ("worse", 1)
    assert exported(raters=(" r1 ", "r2")) == ("better", 2)
    assert exported(annotators=("ann",), raters=("r3",)) == ("worse", 2)
    assert exported(annotators=("ann",), raters=("r1", "r2")) == ("better", 3)
    assert exported(annotators=("ann",)) == ("worse", 1)  # as before: imported judgments out
    with db.read() as session:
        assert export.imported_raters(session) == ["r1", "r2", "r3"]
    with pytest.raises(NotFound, match=r"no imported judgment names the rater 'ann'; check the rater filter "
                                       r"\('ann' is an account"):
        preferences(db, raters=("ann",))
    with pytest.raises(PrefloopError, match="the rater filter chooses imported judgments"):
        preferences(db, raters=("r1",), include_imported=False)
    with pytest.raises(PrefloopError, match="not one string"):
        preferences(db, raters="r1")
    with db.begin() as session:
        rows = export.judgment_rows(session, actor=boss(session), filters=ExportFilter(raters=("r3",)))
    assert [(r["external_annotator"], r["source"]) for r in rows] == [("r3", "imported")]


def test_a_split_that_also_raises_the_overlap_is_said_once(db, settings):
    run_import(db, settings, jsonl(pair(1, winner="a", annotator="r1")))
    report = run_import(db, settings, jsonl(pair(1, winner="b", annotator="r2")), overlap=2)
    assert _pair_state(db) == ("open", 3, 2)
    # Not also "had an overlap below 2; it needs 2 judgments now", which the split's 3 contradicted.
    assert [n for n in report.notes if "overlap below" in n or "no majority" in n] == [
        "1 comparison already here has no majority once this file's answers are in (votes split evenly): it "
        "needs one more judgment, as adaptive overlap asks when annotators disagree, so annotators will see it"]


def test_imported_votes_that_split_a_pair_ask_for_one_more_after_a_judgment_reopening_or_unmarking(db, settings):
    """Adaptive overlap read annotators' votes only: an annotator's B beside a rater's imported A completed the pair
    1-1 (no majority, so no preference row), and a pair split by imported votes while retired or gold came back
    complete."""
    import dataclasses

    from annotate import dashboard, judgments, queue
    from annotate.campaign import get_options
    from tests.factories import make_user

    settings = dataclasses.replace(settings, gold_rate=0.0, probe_rate=0.0)
    run_import(db, settings, jsonl(pair(1, winner="a", annotator="r1")), overlap=2)
    assert _pair_state(db) == ("open", 2, 1)
    with db.begin() as session:
        ann = make_user(session, "ann")
    with db.begin() as session:
        served = queue.next_comparison(session, settings, get_options(session, settings), actor=ann)
        judgments.submit(session, settings, actor=ann, comparison_id=served.comparison_id,
                         shown="left" if served.left_text == "answer 1 b" else "right")  # b: 1-1
    assert _pair_state(db) == ("open", 3, 2)

    run_import(db, settings, jsonl(pair(2, winner="a", annotator="r1")))
    with db.begin() as session:
        boss = admin(session, "root")
        (retired,) = session.scalars(select(Comparison.id).where(Comparison.judgment_count == 1)).all()
        dashboard.retire(session, actor=boss, comparison_id=retired)
    run_import(db, settings, jsonl(pair(2, winner="b", annotator="r2")))  # split while retired: left alone
    with db.begin() as session:
        dashboard.reopen(session, settings, actor=boss, comparison_id=retired)
        pair_2 = session.get(Comparison, retired)
        assert (pair_2.status.value, pair_2.overlap_target, pair_2.judgment_count) == ("open", 3, 2)

    run_import(db, settings, jsonl(pair(3, winner="a")), known_winner="gold")
    run_import(db, settings, jsonl(pair(3, winner="a", annotator="r1"), pair(3, winner="b", annotator="r2")))
    with db.begin() as session:
        gold = session.scalar(select(Comparison.id).where(Comparison.is_gold.is_(True)))
        dashboard.unmark_gold(session, settings, actor=boss, comparison_id=gold)
        pair_3 = session.get(Comparison, gold)
        assert (pair_3.status.value, pair_3.overlap_target, pair_3.judgment_count) == ("open", 3, 2)


def test_annotators_who_disagree_past_the_target_imported_votes_set_ask_for_one_more_than_the_count(db, settings):
    """Two annotators leased a pair before an import's split votes raised it to 3 judgments; their a and b made
    it 2-2. Their disagreement asked for "one more than the target" (4), which the count already met: complete,
    split, no preference row (helper review)."""
    import dataclasses

    from annotate import judgments, queue
    from annotate.campaign import get_options
    from tests.factories import make_user

    settings = dataclasses.replace(settings, gold_rate=0.0, probe_rate=0.0, max_overlap=5)
    run_import(db, settings, jsonl(pair(1)), overlap=2)
    with db.begin() as session:
        people = [make_user(session, "xx"), make_user(session, "yy")]
    served = {}
    for person in people:
        with db.begin() as session:
            served[person.username] = queue.next_comparison(session, settings, get_options(session, settings),
                                                            actor=person)
    run_import(db, settings, jsonl(pair(1, winner="a", annotator="r1"), pair(1, winner="b", annotator="r2")),
               overlap=2)
    assert _pair_state(db) == ("open", 3, 2)
    for person, answer in zip(people, ("answer 1 a", "answer 1 b")):
        lease = served[person.username]
        with db.begin() as session:
            judgments.submit(session, settings, actor=person, comparison_id=lease.comparison_id,
                             shown="left" if lease.left_text == answer else "right")
    assert (_pair_state(db), preferences(db)) == (("open", 5, 4), [])


def test_a_blank_name_in_the_export_filters_is_refused():
    from annotate.errors import PrefloopError

    for filters in (ExportFilter(raters=(" ",)), ExportFilter(annotators=("ann", ""))):
        with pytest.raises(PrefloopError, match="a name in the (rater|annotator) filter is blank"):
            export._check_filters(filters)
