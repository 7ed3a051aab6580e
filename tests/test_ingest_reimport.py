"""Importing a file again: what it may still change about pairs already here, and that it says so.

A dogfooding run imported 20 HH rows with known winners ignored (20 pairs for annotators), imported the same
file again with the defaults, and every pair left annotators' queue without a word: its known winners became
imported judgments that met overlap 1. The advice printed for pairs complete on import ("import them ... with
a higher overlap") could not be followed either: a second import changed nothing about pairs already here.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from annotate.models import Comparison, ComparisonStatus, Prompt, Response
from tests.test_ingest import admin_import_page, jsonl, pair, run_import

FILE = jsonl(*(pair(i, winner="a") for i in range(4)))


def _states(db) -> list[tuple[str, int, int]]:
    with db.read() as session:
        return [(c.status.value, c.overlap_target, c.judgment_count)
                for c in session.scalars(select(Comparison).order_by(Comparison.id))]


def test_known_winners_that_close_pairs_already_here_are_named(db, settings):
    run_import(db, settings, FILE, known_winner="ignore")
    assert _states(db) == [("open", 1, 0)] * 4
    report = run_import(db, settings, FILE)
    assert report.comparisons_added == 0 and report.judgments_added == 4
    assert _states(db) == [("complete", 1, 1)] * 4
    [note] = [n for n in report.notes if "already here" in n]
    assert note.startswith("4 comparisons already here were waiting for annotators and now have the judgments "
                           "they need from the file's known winners, so annotators will not see them any more;")
    assert "import the file again with a higher overlap" in note
    # The same import once more adds nothing and has nothing to say.
    report = run_import(db, settings, FILE)
    assert report.judgments_added == 0 and not [n for n in report.notes if "already here" in n]


def test_importing_again_with_a_higher_overlap_puts_pairs_back_in_the_queue(db, settings):
    first = run_import(db, settings, FILE)
    assert any("4 new comparisons already have the 1 judgment they need" in n
               and "import the file again with a higher overlap" in n for n in first.notes)
    assert _states(db) == [("complete", 1, 1)] * 4
    report = run_import(db, settings, FILE, overlap=2)
    assert report.judgments_added == 0 and report.comparisons_added == 0
    assert _states(db) == [("open", 2, 1)] * 4
    assert ("4 comparisons already here had an overlap below 2; they need 2 judgments now, so 4 comparisons are "
            "back in annotators' queue") in report.notes
    # Never lowered: a later import with overlap 1 leaves them as they are.
    report = run_import(db, settings, FILE, overlap=1)
    assert _states(db) == [("open", 2, 1)] * 4 and not [n for n in report.notes if "already here" in n]


def test_a_higher_overlap_leaves_gold_and_retired_pairs_alone(db, settings):
    run_import(db, settings, jsonl(pair(0, winner="a")), known_winner="gold")
    run_import(db, settings, jsonl(pair(1)))
    with db.begin() as session:
        session.scalars(select(Comparison).order_by(Comparison.id.desc())).first().status = ComparisonStatus.retired
    before = _states(db)
    report = run_import(db, settings, jsonl(pair(0, winner="a"), pair(1)), overlap=3, known_winner="ignore")
    assert _states(db) == before
    assert not [n for n in report.notes if "overlap below" in n]


def test_import_page_says_what_importing_a_file_again_still_does(sqlite_url, tmp_path, monkeypatch):
    """Before, it said that importing again "adds nothing, whatever the options", and kept Import disabled for a
    file this session had imported, whatever options were chosen next."""
    at = admin_import_page(sqlite_url, tmp_path, monkeypatch)
    at.file_uploader(key="import_file").upload("four.jsonl", FILE, "application/jsonl")
    at.run()
    at.selectbox(key="import_known_winner").set_value("ignore")
    at.run()
    next(b for b in at.button if b.label == "Import").click()
    at.run()
    assert not at.exception, at.exception
    assert next(b for b in at.button if b.label == "Import").disabled  # the same options again: nothing to add
    at.selectbox(key="import_known_winner").set_value("judgment")
    at.number_input(key="import_overlap").set_value(2)
    at.run()
    [said] = [i.value for i in at.info if "imported before" in i.value]
    assert "adds no pairs" in said and "whatever the options" not in said
    assert "known winners that are not imported judgments yet become ones" in said
    assert "raised to 2" in said
    import_button = next(b for b in at.button if b.label == "Import")
    assert not import_button.disabled
    import_button.click()
    at.run()
    assert not at.exception, at.exception
    [summary] = [s.value for s in at.success]
    assert "4 imported judgments" in summary and "overlap below 2" in summary


def test_a_preference_export_with_an_empty_response_imports_back(db, settings, tmp_path):
    """HH keeps a response that said nothing as empty text, and exports it so ('"chosen": ""' in the standard
    format, an assistant message with empty content in the conversational one); importing that export was
    refused ("line 103: chosen is empty")."""
    import json

    from annotate import export
    from annotate.accounts import Actor, create_user
    from annotate.ingest import parse_file
    from tests.test_ingest import hh

    run_import(db, settings, jsonl(hh("\n\nHuman: say nothing", "", "Something."),
                                   hh("\n\nHuman: hi", "Hello!", "")))
    with db.begin() as session:
        boss = create_user(session, "boss", "password123", "admin", system=True)
        actor = Actor(id=boss.id, username=boss.username, role=boss.role)
        data = export.preferences_bytes(session, actor=actor, format="jsonl")
    rows = [json.loads(line) for line in data.decode().splitlines()]
    assert [m["content"] for row in rows for m in row["chosen"] + row["rejected"]] == ["", "Something.", "Hello!", ""]
    standard = [{"prompt": "say nothing", "chosen": "", "rejected": " Something."}]
    for name, content in (("conversational.jsonl", data), ("standard.jsonl", jsonl(*standard))):
        path = tmp_path / name
        path.write_bytes(content)
        parsed = parse_file(path)
        assert not parsed.problems, parsed.problems
        assert any("TRL row" in n and "an empty response" in n and "kept as empty text" in n for n in parsed.notes)
    report = run_import(db, settings, data)  # the same pairs: nothing new
    assert report.comparisons_added == 0 and report.responses_added == 0
    blank = parse_file(_write(tmp_path / "both.jsonl", jsonl({"prompt": "p", "chosen": "", "rejected": " "})))
    assert blank.problems == []  # two different texts, both empty to the eye: kept, and noted
    same = parse_file(_write(tmp_path / "same.jsonl", jsonl({"prompt": "p", "chosen": "", "rejected": ""})))
    assert [reason for _, reason in same.problems] == ["'chosen' and 'rejected' are identical"]


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


def test_an_overlap_above_the_maximum_or_the_people_who_can_annotate_is_said(db, settings):
    """The Settings page refuses an overlap above the campaign's maximum; an import allows one (a calibration
    set judged by everyone, say), and a dogfooding run imported pairs at overlap 5 with three annotators
    without a word: they could never be completed."""
    from tests.factories import make_user

    with db.begin() as session:
        for name in ("a1", "a2", "a3"):
            make_user(session, name)
    report = run_import(db, settings, jsonl(*(pair(i) for i in range(3))), overlap=5)
    assert [n for n in report.notes if n.startswith("overlap 5")] == [
        "overlap 5 is above the campaign's maximum overlap (3, the most adaptive overlap asks for and the Settings "
        "page allows): these comparisons need 5 judgments all the same",
        "overlap 5: each of these comparisons needs 5 judgments from different people (imported answers count), "
        "and 3 active accounts can annotate now: add accounts on the Users page, or pairs short of answers stay "
        "in the queue"]
    report = run_import(db, settings, jsonl(*(pair(i) for i in range(3, 6))), overlap=3)
    assert not [n for n in report.notes if n.startswith("overlap")]
    # Nothing new and nothing raised: nothing to say.
    report = run_import(db, settings, jsonl(*(pair(i) for i in range(3))), overlap=5)
    assert not [n for n in report.notes if n.startswith("overlap")]


def test_a_preference_export_mixing_chats_and_text_imports_back_adding_nothing(db, settings):
    """Such an export writes every text prompt as a chat of one user turn (a column has one type); imported
    back, each made a second prompt with its pairs again (617 duplicate pairs back in the queue in a
    dogfooding run). A text prompt and a chat of that one user turn are one prompt, in either order."""
    from annotate import export
    from annotate.models import Prompt
    from tests.test_ingest import admin

    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello?"},
            {"role": "user", "content": "Tell me a joke"}]
    run_import(db, settings, jsonl(pair(1, winner="a"), pair(2, winner="b"),
                                   {"prompt": chat, "response_a": "No.", "response_b": "Why did…", "winner": "b"}))
    with db.begin() as session:
        rows = export.preference_rows(session, actor=admin(session), filters=export.ExportFilter())
    assert rows[0]["prompt"] == [{"role": "user", "content": "prompt 1"}]  # the mixed export's text prompt
    report = run_import(db, settings, jsonl(*({k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows)))
    assert (report.comparisons_added, report.prompts_added, report.responses_added) == (0, 0, 0)
    # and the other way round: a chat of one user turn first, the same words as text later
    one_turn = [{"role": "user", "content": "Only words"}]
    run_import(db, settings, jsonl({"prompt": one_turn, "response_a": "x", "response_b": "y"}))
    report = run_import(db, settings, jsonl({"prompt": "Only words", "response_a": "y", "response_b": "x"}))
    assert (report.comparisons_added, report.prompts_added) == (0, 0)
    # and both forms in one new file: one prompt, one pair
    report = run_import(db, settings, jsonl({"prompt": "Fresh", "response_a": "1", "response_b": "2"},
                                            {"prompt": [{"role": "user", "content": "Fresh"}], "response_a": "2",
                                             "response_b": "1"}))
    assert (report.comparisons_added, report.prompts_added) == (1, 1)
    with db.read() as session:
        assert session.scalar(select(func.count(Prompt.id)).where(Prompt.text == "prompt 1")) == 1


@pytest.mark.parametrize("format", ["jsonl", "csv"])
def test_a_raw_judgment_export_imports_back_as_it_was(db, settings, tmp_path, format):
    """README-follower run: a raw judgment export imported into another database came back with every chat
    prompt as a text prompt of JSON ('[{"role": "user", ...') in JSON Lines, and was refused whole when a pair
    had an empty response (HH has them): "response_b is empty" (CSV: "missing field 'response_b'"). And the
    CSV's spreadsheet guard (a "'" before a cell starting with "-", "=", ...) stayed in the texts."""
    from annotate import export, migrate
    from annotate.db import Database, create_db_engine
    from annotate.settings import load_settings
    from tests.test_ingest import admin

    ResponseA, ResponseB = aliased(Response), aliased(Response)
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello?"},
            {"role": "user", "content": "- list me things"}]
    texts = ["- one\n- two", "=SUM(A1)", "'quoted'", "+1", "@here", "plain", ""]
    rows = [{"prompt": chat, "chosen": "Sure:", "rejected": ""},  # TRL keeps an empty response, as HH does
            *({"prompt": f"q{i}", "chosen": f"other {i}", "rejected": t} for i, t in enumerate(texts[:-1]))]
    run_import(db, settings, jsonl(*rows))
    with db.begin() as session:
        data = export.judgments_bytes(session, actor=admin(session), format=format)

    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    migrate.upgrade(url)
    elsewhere = Database(create_db_engine(url))
    try:
        report = run_import(elsewhere, load_settings(environ={}, data_dir=tmp_path, database_url=url, env="test"),
                            data, filename=f"judgments.{format}")
        assert report.comparisons_added == len(rows), report
        with elsewhere.read() as session:
            pairs = {(p.text, p.messages and tuple((m["role"], m["content"]) for m in p.messages), a.text, b.text)
                     for p, a, b in session.execute(
                         select(Prompt, ResponseA, ResponseB).join(Comparison, Comparison.prompt_id == Prompt.id)
                         .join(ResponseA, ResponseA.id == Comparison.response_a_id)
                         .join(ResponseB, ResponseB.id == Comparison.response_b_id))}
    finally:
        elsewhere.dispose()
    texts_back = {(a, b) for _, _, a, b in pairs}
    assert ("Sure:", "") in texts_back or ("", "Sure:") in texts_back
    for i, t in enumerate(texts[:-1]):
        assert (t, f"other {i}") in texts_back or (f"other {i}", t) in texts_back, (t, texts_back)
    chats = [m for _, m, _, _ in pairs if m and len(m) == 3]
    assert chats == [tuple((m["role"], m["content"]) for m in chat)], pairs


def test_own_export_cells_are_read_back_exactly_old_exports_included(db, settings):
    """Review: every leading "'" of an own-export CSV cell was taken off, so an older export (which did not
    guard a leading "'") lost the apostrophe of "'Twas"; and a text prompt of JSON that is no chat refused the
    whole JSON Lines file ("prompt[0] has role None")."""
    import csv
    import io
    import json

    from annotate.ingest import parse_file

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["comparison_id", "prompt_external_id", "prompt", "response_a", "response_b"])
    writer.writerows([[1, "", "'Twas the night", "''quoted'", "'- item"],  # old, new, new guard
                      [2, "", "p2", "'=SUM(A1)", "''=x"]])
    parsed = parse_file(buf.getvalue().encode(), filename="old.csv", keep_first=10)
    assert not parsed.problems, parsed.problems
    assert [(c.prompt, c.response_a, c.response_b) for c in parsed.comparisons] == [
        ("'Twas the night", "'quoted'", "- item"), ("p2", "=SUM(A1)", "'=x")]
    rows = [{"comparison_id": 1, "prompt_external_id": "", "prompt": '[{"a": 1}]', "response_a": "x",
             "response_b": "y"},
            {"comparison_id": 2, "prompt_external_id": "", "prompt": '[{"role": "user", "content": "hi"}]',
             "response_a": "x", "response_b": "y"}]
    parsed = parse_file("\n".join(json.dumps(r) for r in rows).encode(), filename="j.jsonl", keep_first=10)
    assert not parsed.problems, parsed.problems
    assert [c.prompt for c in parsed.comparisons] == ['[{"a": 1}]', [{"role": "user", "content": "hi"}]]


def _new_file_over(db, settings) -> bytes:
    """A file that gives pairs already here in every way an import finds them, and new ones."""
    run_import(db, settings, jsonl(pair(1), pair(2), {"prompt": [{"role": "user", "content": "Only words"}],
                                                      "response_a": "x", "response_b": "y"}))
    return jsonl(
        {**pair(1), "response_a": "answer 1 b", "response_b": "answer 1 a"},  # here, its responses the other way
        {"prompt": [{"role": "user", "content": "prompt 2"}], "response_a": "answer 2 a",
         "response_b": "answer 2 b"},  # here, its text prompt as a chat of that one turn
        {"prompt": "Only words", "response_a": "y", "response_b": "x"},  # here, its chat prompt as text
        {**pair(1), "response_b": "a new answer"},  # a prompt and a response here, the pair new
        pair(3), pair(3),  # new, twice
        {"prompt": "Fresh", "response_a": "1", "response_b": "2"},  # new, in both forms of its prompt
        {"prompt": [{"role": "user", "content": "Fresh"}], "response_a": "2", "response_b": "1"})


def test_the_pairs_already_here_are_counted_before_importing_as_the_import_counts_them(db, settings):
    """The Import page's preview counted a file's comparisons and said nothing of those already here: a file
    overlapping an earlier one promised pairs that the import then called "already present"."""
    from annotate.ingest import count_present, parse_file

    data = _new_file_over(db, settings)
    parsed = parse_file(data)
    with db.read() as session:
        present = count_present(session, parsed.pair_keys)
    report = run_import(db, settings, data)
    # "Fresh" in its two forms is one pair, as the import stores it (the preview counted it twice)
    assert (present, parsed.comparison_count) == (report.comparisons_existing, 6)
    assert (report.comparisons_existing, report.comparisons_added) == (3, 3)
    with db.read() as session:  # and once imported, every pair of the file is
        assert count_present(session, parse_file(data).pair_keys) == 6


def test_the_import_page_says_how_many_pairs_are_here_already(sqlite_url, tmp_path, monkeypatch):
    from annotate.db import Database, create_db_engine
    from annotate.settings import load_settings
    from tests.test_ingest import admin_import_page

    at = admin_import_page(sqlite_url, tmp_path, monkeypatch)
    database = Database(create_db_engine(sqlite_url))
    try:
        data = _new_file_over(database, load_settings(environ={}, data_dir=tmp_path / "data",
                                                      database_url=sqlite_url, env="test"))
    finally:
        database.dispose()
    at.file_uploader(key="import_file").upload("more.jsonl", data, "application/jsonl")
    at.run()
    assert not at.exception, at.exception
    assert ("Format **pairs** · 8 rows · 6 comparisons (3 already here when the file was read)"
            in [m.value for m in at.markdown]), [m.value for m in at.markdown]
    next(b for b in at.button if b.label == "Import").click()
    at.run()
    (summary,) = [s.value for s in at.success]
    assert summary.startswith("pairs: 8 rows; added 3 comparisons (3 already present)"), summary


def test_a_prompt_in_both_forms_is_one_pair_for_every_count_and_check_of_the_file(db, settings):
    """comparison_count merged the two forms and the votes did not: the preview said "1 comparison" and then
    "2 of the 1 comparisons" meet overlap 1 (the import stored one pair, split 1-1 and open); and one rater's
    two answers to that pair, one per form, were no problem: the import kept the first without a word."""
    from annotate.errors import ImportValidationError
    from annotate.ingest import parse_file

    chat = [{"role": "user", "content": "Fresh"}]
    data = jsonl({"prompt": "Fresh", "response_a": "1", "response_b": "2", "winner": "a"},
                 {"prompt": chat, "response_a": "1", "response_b": "2", "winner": "b"})
    parsed = parse_file(data)
    assert (parsed.comparison_count, parsed.known_count, parsed.votes) == (1, 1, {(2, False): 1})
    assert [n for n in parsed.notes if n.startswith("1 comparison is given different known winners")]
    rater = jsonl({"prompt": "Fresh", "response_a": "1", "response_b": "2", "winner": "a", "annotator": "r1"},
                  {"prompt": chat, "response_a": "2", "response_b": "1", "winner": "a", "annotator": "r1"})
    assert [reason for _, reason in parse_file(rater).problems] == [
        "annotator 'r1' gives this pair another winner than on line 1; a rater has one answer per pair: keep the "
        "row with the final one (importing another answer later replaces theirs)"]
    with pytest.raises(ImportValidationError, match="annotator 'r1' gives this pair another winner"):
        run_import(db, settings, rater)
