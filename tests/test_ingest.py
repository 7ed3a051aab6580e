"""Importing preference data: formats, validation, idempotency, modes, roles."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tracemalloc
from dataclasses import replace

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import aliased
from sqlalchemy.exc import DataError

from annotate import cli, ingest
from annotate.accounts import Actor, create_user
from annotate.errors import ImportValidationError, PermissionDenied, PrefloopError
from annotate.ingest import (
    ImportReport,
    content_hash,
    import_file,
    parse_file,
    prompt_hash,
    seeded_priority,
)
from annotate.models import (
    AuditEvent,
    Choice,
    Comparison,
    ComparisonStatus,
    ImportBatch,
    Judgment,
    JudgmentSource,
    JudgmentState,
    Prompt,
    Response,
)
from annotate.settings import load_settings

HH_DIVERGENT_LINES = (1255, 1689, 1951, 1953, 2037)
TABLES = (Prompt, Response, Comparison, Judgment, ImportBatch, AuditEvent)


def jsonl(*rows) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode() + b"\n"


def pair(i: int, **extra) -> dict:
    return {"prompt": f"prompt {i}", "response_a": f"answer {i} a", "response_b": f"answer {i} b", **extra}


def hh(prompt_turns: str, chosen: str, rejected: str) -> dict:
    return {"chosen": f"{prompt_turns}\n\nAssistant: {chosen}", "rejected": f"{prompt_turns}\n\nAssistant: {rejected}"}


def admin(session, name: str = "boss") -> Actor:
    user = create_user(session, name, "password123", "admin", system=True)
    return Actor(id=user.id, username=user.username, role=user.role)


def counts(session) -> dict[str, int]:
    return {m.__tablename__: session.scalar(select(func.count()).select_from(m)) for m in TABLES}


def run_import(db, settings, data, **kwargs) -> ImportReport:
    with db.begin() as session:
        return import_file(session, settings, data, system=True, **kwargs)


# --------------------------------------------------------------------------- parsing (no database)


def test_pairs_with_text_and_chat_prompts():
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    parsed = parse_file(jsonl(
        pair(1, winner="b", generator_a="m1", generator_b="m2", metadata={"k": 1}, source="s1", id=7),
        {"prompt": chat, "response_a": "hello", "response_b": "hey there"},
    ), filename="x.jsonl")
    assert parsed.format == "pairs" and parsed.problems == [] and parsed.rows == 2
    first, second = parsed.comparisons
    assert (first.line, first.response_a, first.winner, first.generator_b) == (1, "answer 1 a", Choice.b, "m2")
    assert first.metadata == {"k": 1} and first.source_tag == "s1" and first.row_id == "7"
    assert second.prompt == chat and second.winner is None and second.line == 2
    assert second.prompt_hash == prompt_hash(chat) != prompt_hash("hi")
    rows = parsed.preview(1)
    assert rows == [{"line": 1, "prompt": "prompt 1", "response_a": "answer 1 a", "response_b": "answer 1 b",
                     "generator_a": "m1", "generator_b": "m2", "winner": "b", "source": "s1"}]


def test_kwise_makes_every_pair_and_maps_outcomes_to_canonical_order():
    row = {"prompt": "p", "responses": ["r0", {"text": "r1", "generator": "g1", "id": "x1"}, "r2", "r3"],
           "comparisons": [{"a": 2, "b": 0, "winner": "a"}, {"a": 1, "b": 3, "winner": "tie"},
                           {"a": 3, "b": 2, "winner": "b"}]}
    parsed = parse_file(jsonl(row), filename="k.jsonl")
    assert parsed.format == "kwise" and parsed.rows == 1
    got = {(c.response_a, c.response_b): c.winner for c in parsed.comparisons}
    assert len(got) == 6  # 4 * 3 / 2
    assert got[("r0", "r2")] is Choice.b  # (2, 0, a): response 2 beat response 0
    assert got[("r1", "r3")] is Choice.tie
    assert got[("r2", "r3")] is Choice.a  # (3, 2, b): response 2 beat response 3
    assert got[("r0", "r1")] is None and got[("r0", "r3")] is None and got[("r1", "r2")] is None
    r1 = next(c for c in parsed.comparisons if c.response_a == "r1")
    assert (r1.generator_a, r1.response_a_id) == ("g1", "x1")


def test_trl_text_order_by_hash_so_position_carries_no_label():
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)]
    parsed = parse_file(jsonl(*rows), filename="t.jsonl")
    assert parsed.format == "trl" and parsed.problems == []
    for row, c in zip(rows, parsed.comparisons):
        winner_text = c.response_a if c.winner is Choice.a else c.response_b
        assert winner_text == row["chosen"]
        assert content_hash(c.response_a) < content_hash(c.response_b)
    sides = {c.winner for c in parsed.comparisons}
    assert sides == {Choice.a, Choice.b}


def test_trl_conversational_explicit_and_implicit_prompt():
    user = {"role": "user", "content": "What is 2+2?"}
    explicit = {"prompt": [user], "chosen": [{"role": "assistant", "content": "4"}],
                "rejected": [{"role": "assistant", "content": "5"}]}
    implicit = {"chosen": [user, {"role": "assistant", "content": "4"}],
                "rejected": [user, {"role": "assistant", "content": "22"}]}
    parsed = parse_file(jsonl(explicit, implicit), filename="c.jsonl")
    assert parsed.format == "trl" and parsed.problems == []
    for c, rejected in zip(parsed.comparisons, ("5", "22")):
        assert c.prompt == [user]
        assert {c.response_a, c.response_b} == {"4", rejected}
        assert (c.response_a if c.winner is Choice.a else c.response_b) == "4"


def test_hh_transcript_split_into_chat_prompt_and_responses():
    turns = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me a joke"
    parsed = parse_file(jsonl(hh(turns, "Why did the chicken...", "No.")), filename="h.jsonl")
    assert parsed.format == "hh" and parsed.problems == [] and parsed.notes == []
    (c,) = parsed.comparisons
    assert c.prompt == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                        {"role": "user", "content": "tell me a joke"}]
    assert {c.response_a, c.response_b} == {"Why did the chicken...", "No."}
    assert (c.response_a if c.winner is Choice.a else c.response_b) == "Why did the chicken..."


def test_hh_divergence_before_final_turn_is_split_at_last_shared_turn_and_noted():
    row = {"chosen": "\n\nHuman: q\n\nAssistant: A1\n\nHuman: more\n\nAssistant: A2",
           "rejected": "\n\nHuman: q\n\nAssistant: B1"}
    parsed = parse_file(jsonl(hh("\n\nHuman: x", "y", "z"), row), filename="h.jsonl")
    c = parsed.comparisons[1]
    assert c.prompt == [{"role": "user", "content": "q"}]
    assert {c.response_a, c.response_b} == {"A1\n\nHuman: more\n\nAssistant: A2", "B1"}
    assert any("(line 2)" in n and "kept as written" in n for n in parsed.notes)


def test_hh_rows_parting_inside_a_human_turn_are_noted():
    """Chosen and rejected share their last assistant turn but go on with different Human turns."""
    row = {"chosen": "\n\nHuman: q\n\nAssistant: A\n\nHuman: thanks", "rejected": "\n\nHuman: q\n\nAssistant: B"}
    parsed = parse_file(jsonl(row), filename="h.jsonl")
    (c,) = parsed.comparisons
    assert {c.response_a, c.response_b} == {"A\n\nHuman: thanks", "B"}
    assert any("(line 1)" in n and "kept as written" in n for n in parsed.notes)


def test_csv_pairs_with_chat_prompt_cell_and_file_line_numbers():
    chat = json.dumps([{"role": "user", "content": "hi"}])
    text = ("prompt,response_a,response_b,winner,extra\n"
            f"\"{chat.replace(chr(34), chr(34) * 2)}\",hello,hey,a,x\n"
            "\"multi\nline prompt\",one,two,,y\n"
            "p3,same,same,b,z\n")
    parsed = parse_file(text.encode(), filename="pairs.csv")
    assert parsed.format == "pairs"
    assert parsed.comparisons[0].prompt == [{"role": "user", "content": "hi"}]
    assert parsed.comparisons[0].winner is Choice.a
    assert parsed.comparisons[1].prompt == "multi\nline prompt" and parsed.comparisons[1].winner is None
    assert parsed.problems == [(5, "response_a and response_b are identical")]
    assert any("extra" in n for n in parsed.notes)


def test_csv_with_wrong_columns_names_the_expected_ones():
    with pytest.raises(ImportValidationError) as err:
        parse_file(b"question,answer1,answer2\nq,a,b\n", filename="bad.csv")
    assert "response_a" in str(err.value) and "chosen" in str(err.value)
    with pytest.raises(ImportValidationError, match="response_b"):
        parse_file(b"prompt,response_a\nq,a\n", filename="bad.csv", fmt="pairs")


def test_csv_with_a_repeated_column_is_refused_not_half_read():
    data = b"prompt,response_a,response_b,response_b\nq,first,second,third\n"
    with pytest.raises(ImportValidationError, match="repeats the column.s. response_b") as info:
        parse_file(data, filename="dup.csv")
    assert info.value.problems == [(1, "repeated CSV column(s) response_b")]


def test_a_json_key_given_twice_is_a_row_problem_not_a_silent_pick():
    line = '{"prompt": "q", "response_a": "x", "response_b": "y", "response_b": "z"}'
    for data, name in ((jsonl(pair(1), line), "d.jsonl"), (f"[{json.dumps(pair(1))},\n{line}]".encode(), "d.json")):
        parsed = parse_file(data, filename=name)
        assert parsed.problems == [(2, "invalid JSON (the key 'response_b' appears more than once in one object)")]


def test_json_array_and_gzip():
    array = json.dumps([pair(1), pair(2, winner="a")], indent=2).encode()
    parsed = parse_file(array, filename="x.json")
    assert [c.line for c in parsed.comparisons] == [2, 7]
    assert parsed.comparisons[1].winner is Choice.a
    gz = parse_file(gzip.compress(jsonl(pair(1), pair(2))), filename="x.jsonl.gz")
    assert len(gz.comparisons) == 2 and gz.problems == []


def test_every_bad_row_is_reported_with_its_line():
    rows = [
        pair(1),                                                              # 1 ok
        "{not json",                                                          # 2
        "[1, 2]",                                                             # 3
        {"prompt": "p", "response_a": "a"},                                   # 4 missing response_b
        {"prompt": 5, "response_a": "a", "response_b": "b"},                  # 5 wrong type
        {"prompt": "   ", "response_a": "a", "response_b": "b"},              # 6 empty
        {"prompt": "p", "response_a": "x" * 101, "response_b": "b"},          # 7 too long
        {"prompt": "p", "response_a": "same", "response_b": "same"},          # 8 identical
        pair(9, winner="left"),                                               # 9 unknown winner
        {"prompt": [{"role": "robot", "content": "hi"}], "response_a": "a", "response_b": "b"},  # 10 role
        {"prompt": "p", "chosen": "a", "rejected": "b"},                      # 11 mixed formats
        pair(12),                                                             # 12 ok
        {"prompt": "only a prompt"},                                          # 13 missing responses
    ]
    parsed = parse_file(jsonl(*rows), filename="bad.jsonl", max_text_chars=100)
    by_line = dict(parsed.problems)
    assert sorted(by_line) == [*range(2, 12), 13]
    assert "invalid JSON" in by_line[2]
    assert "object" in by_line[3]
    assert "response_b" in by_line[4]
    assert "prompt" in by_line[5] and "string" in by_line[5]
    assert "empty" in by_line[6]
    assert "100" in by_line[7]
    assert "identical" in by_line[8]
    assert "left" in by_line[9] and "both_bad" in by_line[9]
    assert "robot" in by_line[10]
    assert "one format" in by_line[11]
    assert "response_a" in by_line[13] and "response_b" in by_line[13]
    assert [c.line for c in parsed.comparisons] == [1, 12]


def test_kwise_index_out_of_range_and_unknown_winner():
    rows = [{"prompt": "p", "responses": ["a", "b"], "comparisons": [{"a": 0, "b": 2, "winner": "a"}]},
            {"prompt": "p", "responses": ["a", "b"], "comparisons": [{"a": 0, "b": 1, "winner": "x"}]},
            {"prompt": "p", "responses": ["a", "a"]}]
    by_line = dict(parse_file(jsonl(*rows), filename="k.jsonl").problems)
    assert "out of range" in by_line[1] and "0 to 1" in by_line[1]
    assert "unknown" in by_line[2]
    assert "identical" in by_line[3]


def test_kwise_row_over_the_response_limit_is_a_problem_before_any_pair_is_built():
    small = {"prompt": "p", "responses": ["r0", "r1"]}
    huge = {"prompt": "p", "responses": [f"r{i}" for i in range(1000)]}  # ~8 KB: 499,500 pairs if expanded
    tracemalloc.start()
    try:
        parsed = parse_file(jsonl(small, huge, small), filename="k.jsonl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [line for line, _ in parsed.problems] == [2]
    assert "1,000 responses" in parsed.problems[0][1]
    assert f"at most {ingest.MAX_KWISE_RESPONSES}" in parsed.problems[0][1]
    assert peak < 8 * 2**20  # the 499,500 comparisons took 231 MiB
    assert [c.line for c in parsed.comparisons] == [1, 3]
    k = ingest.MAX_KWISE_RESPONSES
    at_limit = {"prompt": "p", "responses": [f"r{i}" for i in range(k)]}
    over = {"prompt": "q", "responses": [f"r{i}" for i in range(k + 1)]}
    parsed = parse_file(jsonl(at_limit, over), filename="k.jsonl")
    assert [line for line, _ in parsed.problems] == [2] and len(parsed.comparisons) == k * (k - 1) // 2


def test_file_over_the_comparison_limit_names_the_row_that_passes_it(monkeypatch):
    monkeypatch.setattr(ingest, "MAX_FILE_COMPARISONS", 10)
    kwise = [{"prompt": f"p{i}", "responses": ["a", "b", "c"]} for i in range(6)]  # 3 comparisons each
    kwise[4]["responses"] = ["a", "a"]  # a bad row after the limit is still reported
    parsed = parse_file(jsonl(*kwise), filename="k.jsonl")
    assert [line for line, _ in parsed.problems] == [4, 5]
    assert "15 comparisons" in parsed.problems[0][1] and "10 one import may add" in parsed.problems[0][1]
    assert "split the file" in parsed.problems[0][1] and "identical" in parsed.problems[1][1]
    assert len(parsed.comparisons) == 9  # rows past the limit are checked, not kept
    assert parse_file(jsonl(*(pair(i) for i in range(10))), filename="p.jsonl").problems == []
    parsed = parse_file(jsonl(*(pair(i) for i in range(11))), filename="p.jsonl")
    assert [line for line, _ in parsed.problems] == [11]


def test_deeply_nested_json_is_a_problem_not_a_crash():
    parsed = parse_file(jsonl(pair(1), "[" * 100_000, pair(3)), filename="deep.jsonl")
    assert parsed.problems == [(2, "invalid JSON (nested too deeply)")]
    assert [c.line for c in parsed.comparisons] == [1, 3]
    text = "prompt,response_a,response_b,metadata\np,a,b,{}\nq,a,b," + "[" * 100_000 + "\n"
    parsed = parse_file(text.encode(), filename="deep.csv")
    assert parsed.problems == [(3, "column 'metadata' is not valid JSON (nested too deeply)")]
    with pytest.raises(ImportValidationError, match="nested too deeply"):
        parse_file(b"[" + b"[" * 100_000, filename="deep.json")
    # Readable but near the recursion limit, metadata fails json.dumps when stored: it is bounded well below.
    depth = ingest.MAX_JSON_DEPTH
    meta = '{"x": ' + "[" * depth + "]" * depth + "}"  # depth + 1 levels
    row = '{"prompt": "p", "response_a": "a", "response_b": "b", "metadata": %s}' % meta
    kwise = '{"prompt": "p", "responses": ["a", {"text": "b", "metadata": %s}]}' % meta
    parsed = parse_file(jsonl(pair(1), row), filename="meta.jsonl")
    assert parsed.problems == [(2, f"'metadata' is nested more than {depth} levels deep")]
    assert parse_file(jsonl(row.replace("[]", "1")), filename="meta.jsonl").problems == []  # at the limit
    assert parse_file(jsonl(kwise), filename="meta.jsonl").problems[0][0] == 1
    ok = {"a": {"b": [[{"c": 1}]]}}
    assert parse_file(jsonl(pair(1, metadata=ok)), filename="ok.jsonl").comparisons[0].metadata == ok


def test_nan_infinity_and_overflowing_numbers_are_row_problems():
    bad = '{"prompt": "p%d", "response_a": "a", "response_b": "b", "metadata": {"score": %s}}'
    rows = [pair(1), bad % (2, "NaN"), bad % (3, "Infinity"), bad % (4, "-Infinity"), bad % (5, "1e999"),
            pair(6, metadata={"score": 0.5})]
    parsed = parse_file(jsonl(*rows), filename="nan.jsonl")
    by_line = dict(parsed.problems)
    assert sorted(by_line) == [2, 3, 4, 5]
    for line, word in ((2, "NaN"), (3, "Infinity"), (4, "-Infinity"), (5, "1e999")):
        assert by_line[line].startswith("invalid JSON") and word in by_line[line]
    assert [c.line for c in parsed.comparisons] == [1, 6] and parsed.comparisons[1].metadata == {"score": 0.5}
    array = "[\n" + json.dumps(pair(1)) + ",\n" + bad % (2, "NaN") + ",\n" + json.dumps(pair(3)) + "\n]"
    parsed = parse_file(array.encode(), filename="nan.json")
    assert [line for line, _ in parsed.problems] == [3] and "NaN" in parsed.problems[0][1]
    assert [c.line for c in parsed.comparisons] == [2, 4]
    text = 'prompt,response_a,response_b,metadata\np,a,b,"{""s"": Infinity}"\n'
    parsed = parse_file(text.encode(), filename="nan.csv")
    assert [line for line, _ in parsed.problems] == [2] and "Infinity" in parsed.problems[0][1]


def test_size_limits_and_file_level_errors(tmp_path):
    big = jsonl(*[pair(i) for i in range(200)])
    with pytest.raises(ImportValidationError, match="PREFLOOP_MAX_UPLOAD_MB"):
        parse_file(big, max_bytes=1000)
    path = tmp_path / "big.jsonl"
    path.write_bytes(big)
    with pytest.raises(ImportValidationError, match="PREFLOOP_MAX_UPLOAD_MB"):
        parse_file(path, max_bytes=1000)
    bomb = gzip.compress(b"\n" * 50_000)
    assert len(bomb) < 1000
    with pytest.raises(ImportValidationError, match="decompresses"):
        parse_file(bomb, max_bytes=1000)
    with pytest.raises(ImportValidationError, match="empty"):
        parse_file(b"  \n\n", filename="e.jsonl")
    with pytest.raises(ImportValidationError, match="pairs.*kwise.*trl.*hh"):
        parse_file(jsonl({"question": "q", "answer": "a"}), filename="u.jsonl")
    with pytest.raises(ImportValidationError, match="accepted formats"):
        parse_file(jsonl(pair(1)), fmt="parquet")


def test_encoding_error_names_the_line():
    data = jsonl(pair(1)) + b'{"prompt": "caf\xe9", "response_a": "a", "response_b": "b"}\n'
    parsed = parse_file(data, filename="latin1.jsonl")
    assert parsed.problems and parsed.problems[0][0] == 2 and "UTF-8" in parsed.problems[0][1]


def test_duplicate_rows_are_noted():
    parsed = parse_file(jsonl(pair(1, winner="a"), pair(2), pair(1, winner="a")), filename="d.jsonl")
    assert parsed.problems == []
    assert any("duplicate" in n and "3" in n for n in parsed.notes)


# --------------------------------------------------------------------------- importing (SQLite and PostgreSQL)


def test_hh_real_file_imports_2312_then_nothing(db, settings, hh_path):
    report = run_import(db, settings, hh_path)
    assert report.format == "hh" and report.rows == 2312
    assert report.comparisons_added == 2312 and report.judgments_added == 2312
    assert any(all(str(n) in note for n in HH_DIVERGENT_LINES) for note in report.notes)
    again = run_import(db, settings, hh_path)
    assert (again.comparisons_added, again.prompts_added, again.responses_added, again.judgments_added) == (0, 0, 0, 0)
    assert again.comparisons_existing == 2312
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Comparison)) == 2312
        assert session.scalar(select(func.count()).select_from(Judgment)) == 2312
        by_choice = dict(session.execute(select(Judgment.choice, func.count()).group_by(Judgment.choice)).all())
        # Canonical order by hash: the chosen response is A about half the time.
        assert 800 < by_choice[Choice.a] < 1500 and by_choice[Choice.a] + by_choice[Choice.b] == 2312
        assert session.scalar(select(func.count()).select_from(Prompt).where(Prompt.messages.is_(None))) == 0
        batches = session.scalars(select(ImportBatch)).all()
        assert len(batches) == 2 and batches[0].format == "hh" and batches[0].counts["comparisons_added"] == 2312


def test_pairs_import_judgments_status_and_priority(db, settings):
    data = jsonl(pair(1, winner="a", generator_a="m1"), pair(2), pair(3, winner="tie", source="row-tag"))
    report = run_import(db, settings, data, filename="p.jsonl")
    added = (report.prompts_added, report.responses_added, report.comparisons_added, report.judgments_added)
    assert added == (3, 6, 3, 2)
    with db.read() as session:
        comps = {c.prompt.text: c for c in session.scalars(select(Comparison))}
        one = comps["prompt 1"]
        assert (one.status, one.judgment_count, one.overlap_target) == (ComparisonStatus.complete, 1, 1)
        assert one.response_a.text == "answer 1 a" and one.response_a.generator == "m1"
        assert comps["prompt 2"].status is ComparisonStatus.open and comps["prompt 2"].judgment_count == 0
        assert comps["prompt 3"].source_tag == "row-tag"
        judgment = session.scalar(select(Judgment).where(Judgment.comparison_id == one.id))
        assert (judgment.source, judgment.annotator_id, judgment.choice) == (JudgmentSource.imported, None, Choice.a)
        priorities = [c.priority for c in comps.values()]
        assert all(0 <= p < 1 for p in priorities) and len(set(priorities)) == 3
        c2 = comps["prompt 2"]
        assert c2.priority == seeded_priority(settings.queue_seed, prompt_hash("prompt 2"),
                                              content_hash("answer 2 a"), content_hash("answer 2 b"))
        assert seeded_priority(settings.queue_seed + 1, prompt_hash("prompt 2"), content_hash("answer 2 a"),
                               content_hash("answer 2 b")) != c2.priority


def test_overlap_argument_and_source_tag_override(db, settings):
    run_import(db, settings, jsonl(pair(1, winner="a", source="row")), overlap=2, source_tag="batch-7")
    with db.read() as session:
        c = session.scalar(select(Comparison))
        assert (c.overlap_target, c.judgment_count, c.status) == (2, 1, ComparisonStatus.open)
        assert c.source_tag == "batch-7" and c.prompt.source_tag == "batch-7"


def test_kwise_and_trl_import(db, settings):
    kwise = {"prompt": "p", "responses": ["r0", "r1", "r2"], "comparisons": [{"a": 2, "b": 0, "winner": "a"}]}
    report = run_import(db, settings, jsonl(kwise), filename="k.jsonl")
    assert (report.comparisons_added, report.responses_added, report.judgments_added) == (3, 3, 1)
    user = {"role": "user", "content": "hi"}
    trl = {"chosen": [user, {"role": "assistant", "content": "hello!"}],
           "rejected": [user, {"role": "assistant", "content": "go away"}]}
    report = run_import(db, settings, jsonl(trl), filename="t.jsonl")
    assert report.format == "trl" and report.comparisons_added == 1
    with db.read() as session:
        j = session.scalar(select(Judgment).join(Comparison).where(Comparison.prompt.has(Prompt.text == "p")))
        comp = session.get(Comparison, j.comparison_id)
        winner = comp.response_a if j.choice is Choice.a else comp.response_b
        assert winner.text == "r2" and {comp.response_a.text, comp.response_b.text} == {"r0", "r2"}
        chat = session.scalar(select(Prompt).where(Prompt.text.is_(None)))
        assert chat.messages == [user]


def test_reimport_is_idempotent_including_judgments_in_either_order(db, settings):
    run_import(db, settings, jsonl(pair(1, winner="a")))
    swapped = {"prompt": "prompt 1", "response_a": "answer 1 b", "response_b": "answer 1 a"}
    same = run_import(db, settings, jsonl({**swapped, "winner": "b"}))  # the same outcome, seen from B's side
    assert (same.comparisons_added, same.comparisons_existing, same.judgments_added) == (0, 1, 0)
    other = run_import(db, settings, jsonl({**swapped, "winner": "a"}), overlap=3)  # a different label
    assert other.judgments_added == 1
    again = run_import(db, settings, jsonl({**swapped, "winner": "a"}))
    assert again.judgments_added == 0
    with db.read() as session:
        c = session.scalar(select(Comparison))
        assert c.response_a.text == "answer 1 a" and c.judgment_count == 2
        assert sorted(j.choice.value for j in session.scalars(select(Judgment))) == ["a", "b"]


def test_an_annotators_vote_does_not_stand_for_the_files_known_outcome(db, settings):
    """Re-import skips an outcome only when an imported judgment already records it: an annotator who
    picked the same answer is another vote, not the file's."""
    run_import(db, settings, jsonl(pair(1)), overlap=3)
    with db.begin() as session:
        boss = admin(session)
        cid = session.scalar(select(Comparison.id))
        session.add(Judgment(comparison_id=cid, annotator_id=boss.id, source=JudgmentSource.annotator,
                             choice=Choice.a))
    assert run_import(db, settings, jsonl(pair(1, winner="a"))).judgments_added == 1
    assert run_import(db, settings, jsonl(pair(1, winner="a"))).judgments_added == 0
    with db.read() as session:
        assert sorted(j.source.value for j in session.scalars(select(Judgment))) == ["annotator", "imported"]


def test_gold_and_ignore_modes(db, settings):
    report = run_import(db, settings, jsonl(pair(1, winner="b"), pair(2)), known_winner="gold")
    assert (report.gold_added, report.judgments_added) == (1, 0)
    run_import(db, settings, jsonl(pair(3, winner="a")), known_winner="ignore")
    with db.read() as session:
        comps = {c.prompt.text: c for c in session.scalars(select(Comparison))}
        gold = comps["prompt 1"]
        assert (gold.is_gold, gold.gold_choice, gold.status, gold.judgment_count) == (
            True, Choice.b, ComparisonStatus.open, 0)
        assert comps["prompt 2"].is_gold is False
        assert comps["prompt 3"].is_gold is False and comps["prompt 3"].judgment_count == 0
        assert session.scalar(select(func.count()).select_from(Judgment)) == 0
    with pytest.raises(ImportValidationError, match="gold"):
        run_import(db, settings, jsonl(pair(4, winner="a"), pair(4, winner="b")), known_winner="gold")


def test_one_bad_row_writes_nothing(db, settings):
    with db.begin() as session:
        actor = admin(session)
    with db.read() as session:
        before = counts(session)
    rows = [pair(i, winner="a") for i in range(1, 6)]
    rows[2] = {"prompt": "p", "response_a": "same", "response_b": "same"}
    with pytest.raises(ImportValidationError) as err:
        with db.begin() as session:
            import_file(session, settings, jsonl(*rows), filename="one-bad.jsonl", actor=actor)
    assert "line 3" in str(err.value) and err.value.problems == [(3, "response_a and response_b are identical")]
    with db.read() as session:
        assert counts(session) == before


def test_many_bad_rows_all_reported_message_capped(db, settings):
    rows = [pair(1)] + [{"prompt": "p", "response_a": "", "response_b": "b"} for _ in range(25)]
    with pytest.raises(ImportValidationError) as err:
        run_import(db, settings, jsonl(*rows))
    assert [line for line, _ in err.value.problems] == list(range(2, 27))
    message = str(err.value)
    assert "line 21:" in message and "line 22:" not in message and "5 more" in message
    with db.read() as session:
        assert counts(session)["comparisons"] == 0


def test_nan_and_deep_metadata_rows_write_nothing(db, settings):
    # Before: NaN was stored on SQLite (an export no JSON reader accepts) and failed PostgreSQL's insert;
    # metadata nested ~985 deep (readable from a shallow stack) raised RecursionError at insert.
    deep = '{"prompt": "p3", "response_a": "a", "response_b": "b", "metadata": {"x": %s}}' % (
        "[" * 100 + "]" * 100)
    data = jsonl(pair(1), '{"prompt": "p2", "response_a": "a", "response_b": "b", "metadata": {"x": NaN}}', deep)
    with pytest.raises(ImportValidationError) as err:
        run_import(db, settings, data, filename="bad.jsonl")
    assert [line for line, _ in err.value.problems] == [2, 3]
    assert "line 2: invalid JSON (NaN" in str(err.value) and "line 3: 'metadata' is nested" in str(err.value)
    with db.read() as session:
        assert counts(session)["comparisons"] == 0 and counts(session)["prompts"] == 0


NUL = "\u0000"
NUL_ROWS = {
    "response": (pair(2, response_a=f"a{NUL}b"), "response_a contains a NUL character"),
    "text prompt": (pair(2, prompt=f"p{NUL}"), "prompt contains a NUL character"),
    "chat prompt": (pair(2, prompt=[{"role": "user", "content": f"hi{NUL}"}]), "prompt[0].content contains a NUL"),
    "id": (pair(2, id=f"r{NUL}"), "'id' contains a NUL character"),
    "generator": (pair(2, generator_b=f"m{NUL}"), "'generator_b' contains a NUL character"),
    "metadata value": (pair(2, metadata={"k": [f"v{NUL}"]}), "a string in 'metadata' contains a NUL"),
    "metadata key": (pair(2, metadata={"k": {f"x{NUL}": 1}}), "a string in 'metadata' contains a NUL"),
    "kwise response": ({"prompt": "q", "responses": ["a", {"text": "b", "metadata": {"m": NUL}}]},
                       "a string in 'metadata' contains a NUL"),
    "hh": (hh(f"\n\nHuman: hi{NUL}", "yes", "no"), "prompt[0].content contains a NUL"),
    "trl messages": ({"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"y{NUL}"}],
                      "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "n"}]},
                     "contains a NUL"),
}


@pytest.mark.parametrize("case", list(NUL_ROWS))
def test_a_nul_character_is_a_row_problem_on_every_backend(db, settings, case):
    """SQLite stored a NUL character; PostgreSQL's import stopped with a DataError traceback on a text (and stored
    it in JSON, where its ->> operators cannot read it). The same file now gives the same row problem on both."""
    row, reason = NUL_ROWS[case]
    first = pair(1) if "prompt" in row else hh("\n\nHuman: first", "yes", "no")
    if "responses" in row:
        first = {"prompt": "q0", "responses": ["a", "b"]}
    elif "prompt" not in row and isinstance(row["chosen"], list):
        first = {"prompt": "q0", "chosen": "y", "rejected": "n"}
    with pytest.raises(ImportValidationError) as err:
        run_import(db, settings, jsonl(first, row), filename="nul.jsonl")
    assert [line for line, _ in err.value.problems] == [2]
    assert reason in err.value.problems[0][1] and "line 2: " in str(err.value), err.value.problems
    with db.read() as session:
        assert set(counts(session).values()) == {0}


def test_a_nul_character_in_a_csv_cell_or_the_source_tag_is_refused(db, settings):
    csv_data = b"prompt,response_a,response_b\np1,a,b\np2,a\x00b,c\n"
    assert parse_file(csv_data, filename="x.csv").problems == [
        (3, "response_a contains a NUL character (\\u0000) at character 2, which PostgreSQL cannot store; remove it")]
    with pytest.raises(PrefloopError, match="NUL"):
        run_import(db, settings, jsonl(pair(1)), source_tag=f"t{NUL}")
    with db.read() as session:
        assert set(counts(session).values()) == {0}


def test_cli_import_prints_nesting_and_kwise_problems(tmp_path, sqlite_url, monkeypatch, capsys):
    monkeypatch.setenv("PREFLOOP_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "data"))
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl({"prompt": "p", "responses": ["a", "b"]}, "[" * 100_000,
                           {"prompt": "p", "responses": [f"r{i}" for i in range(1000)]},
                           '{"prompt": "p", "responses": ["a", "b"], "metadata": {"x": NaN}}'))
    assert cli.main(["import", str(path)]) == 2
    err = capsys.readouterr().err
    assert "line 2: invalid JSON (nested too deeply)" in err and "line 3: 'responses' has 1,000" in err
    assert "line 4: invalid JSON (NaN" in err and "nothing was imported" in err
    array = tmp_path / "deep.json"
    array.write_bytes(b"[" * 100_000)
    assert cli.main(["import", str(array)]) == 2
    assert "nested too deeply" in capsys.readouterr().err


def test_upload_size_setting_enforced(db, settings):
    small = replace(settings, max_upload_mb=1)
    with pytest.raises(ImportValidationError, match="PREFLOOP_MAX_UPLOAD_MB"):
        run_import(db, small, b" " * (2**20 + 1) + jsonl(pair(1)))
    tight = replace(settings, max_text_chars=9)
    with pytest.raises(ImportValidationError, match="9-character limit"):
        run_import(db, tight, jsonl(pair(1)))


def test_role_enforcement_and_audit(db, settings):
    with db.begin() as session:
        boss = admin(session)
        worker = create_user(session, "worker", "password123", "annotator", system=True)
        annotator = Actor(id=worker.id, username=worker.username, role=worker.role)
    for actor in (annotator, None):
        with pytest.raises(PermissionDenied):
            with db.begin() as session:
                import_file(session, settings, jsonl(pair(1)), actor=actor)
    with db.begin() as session:
        report = import_file(session, settings, jsonl(pair(1)), filename="ok.jsonl", actor=boss)
    assert report.comparisons_added == 1
    with db.read() as session:
        event_ = session.scalar(select(AuditEvent).where(AuditEvent.action == "import"))
        assert event_.actor_id == boss.id and event_.detail["comparisons_added"] == 1
        batch = session.scalar(select(ImportBatch))
        assert batch.created_by_id == boss.id and batch.filename == "ok.jsonl"


def test_import_uses_a_bounded_number_of_statements(db, settings):
    statements = []
    listener = lambda *args: statements.append(1)  # noqa: E731
    event.listen(db.engine, "before_cursor_execute", listener)
    try:
        report = run_import(db, settings, jsonl(*[pair(i, winner="a") for i in range(1500)]))
        first = len(statements)
        statements.clear()
        again = run_import(db, settings, jsonl(*[pair(i, winner="a") for i in range(1500)]))
    finally:
        event.remove(db.engine, "before_cursor_execute", listener)
    assert report.comparisons_added == 1500 and again.comparisons_added == 0
    assert first < 60 and len(statements) < 60


@pytest.fixture
def pg_settings(tmp_path, pg_clean_url):
    return load_settings(environ={}, data_dir=tmp_path / "data", database_url=pg_clean_url, env="test")


@pytest.mark.postgres
def test_postgresql_loads_rows_by_copy_not_long_insert_statements(pg_db, pg_settings):
    """Multi-row INSERT ... VALUES statements of 2,000 rows each were about 40% of a large import's time on
    PostgreSQL (building and parsing them); rows now go in by COPY, and every INSERT is short."""
    inserts = []

    def listener(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(statement)

    event.listen(pg_db.engine, "before_cursor_execute", listener)
    try:
        report = run_import(pg_db, pg_settings, jsonl(*[pair(i, winner="a") for i in range(1500)]))
    finally:
        event.remove(pg_db.engine, "before_cursor_execute", listener)
    assert (report.comparisons_added, report.judgments_added) == (1500, 1500)
    assert inserts and max(len(statement) for statement in inserts) < 2000, max(map(len, inserts))


@pytest.mark.postgres
def test_a_driver_error_while_copying_is_sqlalchemys_and_writes_nothing(pg_db, pg_settings):
    """The Import page catches SQLAlchemy's OperationalError (a lost connection: "not saved"); COPY runs on the
    driver's own cursor, whose errors SQLAlchemy does not see. A NUL character, which PostgreSQL cannot store,
    is such an error (a file's NUL is a row problem: it is put into the prepared rows here)."""
    prepared = ingest.prepare_import(pg_settings, jsonl(pair(1), {"prompt": "p", "response_a": "ab", "response_b": "c"}))
    key = (prompt_hash("p"), content_hash("ab"))
    prepared.responses[key] = prepared.responses[key]._replace(text="a\u0000b")
    with pytest.raises(DataError, match="NUL"):
        run_import(pg_db, pg_settings, prepared)
    with pg_db.read() as session:
        assert set(counts(session).values()) == {0}


def test_stored_rows_keep_every_character_and_store_sql_null_for_what_a_row_leaves_out(db, settings):
    """What COPY writes on PostgreSQL is what an INSERT writes on SQLite: texts to the last character
    (COPY's own escapes: tab, newlines, backslash, a literal \\N), SQL NULL (not JSON 'null') for a
    missing prompt text, messages or metadata, and the Python-side defaults (n_chars, created_at, flags)."""
    odd = "tab\there\nnew line\r\ncrlf \\ backslash \\N not null, \\. alone, caf\u00e9 \U0001f600 \u2028"
    huge = odd + "x" * (settings.max_text_chars - len(odd))
    chat = [{"role": "system", "content": odd}, {"role": "user", "content": "hi"}]
    rows = [{"prompt": odd, "response_a": huge, "response_b": "b", "winner": "b", "metadata": {"k": [1, None]}},
            {"prompt": chat, "response_a": "a", "response_b": odd, "generator_a": "g\t1", "id": "row\\2"}]
    report = run_import(db, settings, jsonl(*rows))
    assert (report.prompts_added, report.responses_added, report.comparisons_added) == (2, 4, 2)
    P, R, C, J = Prompt.__table__, Response.__table__, Comparison.__table__, Judgment.__table__
    with db.read() as session:
        texts = dict(session.execute(select(R.c.text, R.c.n_chars)).all())
        assert texts == {huge: len(huge), "b": 1, "a": 1, odd: len(odd)}
        assert session.execute(select(P.c.text, P.c.messages).order_by(P.c.id)).all() == [(odd, None), (None, chat)]
        nulls = lambda table, col: session.scalar(  # noqa: E731 - SQL NULL, which JSON 'null' is not
            select(func.count()).select_from(table).where(table.c[col].is_(None)))
        assert (nulls(P, "text"), nulls(P, "messages"), nulls(P, "metadata"), nulls(R, "metadata")) == (1, 1, 1, 4)
        assert session.scalar(select(P.c["metadata"]).where(P.c.text == odd)) == {"k": [1, None]}
        assert session.scalar(select(R.c.generator).where(R.c.generator.is_not(None))) == "g\t1"
        assert session.scalar(select(C.c.external_id).where(C.c.external_id.is_not(None))) == "row\\2"
        assert nulls(C, "gold_choice") == 2 and nulls(C, "created_at") == 0 and nulls(R, "created_at") == 0
        judgment = session.scalar(select(Judgment))
        assert (judgment.choice, judgment.source, judgment.state, judgment.flags) == (
            Choice.b, JudgmentSource.imported, JudgmentState.active, [])
        assert judgment.created_at.tzinfo is not None and nulls(J, "annotator_id") == 1


def test_an_import_writes_every_column_that_has_a_default_or_may_not_be_null():
    """An import writes its rows' stored values itself (not through SQLAlchemy, which would fill in the model's
    Python-side defaults): a column added with such a default or NOT NULL must be added to what it writes."""
    written = {Prompt: ingest._PROMPT_COLUMNS, Response: ingest._RESPONSE_COLUMNS,
               Comparison: ingest._COMPARISON_COLUMNS, Judgment: ingest._JUDGMENT_COLUMNS}
    for model, columns in written.items():
        table = model.__table__
        needed = {col.name for col in table.columns if col is not table.autoincrement_column
                  and (col.default is not None or (not col.nullable and col.server_default is None))}
        assert needed <= set(columns), (table.name, needed - set(columns))
        assert set(columns) <= {col.name for col in table.columns}, table.name


def test_imports_of_many_batches_and_two_in_one_transaction(db, settings, monkeypatch):
    """More rows than one batch (COPY's staging table is emptied between batches) and two imports in one
    transaction (each makes and drops its own staging tables) add what is new once."""
    monkeypatch.setattr(ingest, "_COPY_BATCH", 7)
    monkeypatch.setattr(ingest, "_INSERT_BATCH", 7)
    first = run_import(db, settings, jsonl(*[pair(i, winner="a") for i in range(30)]))
    assert (first.prompts_added, first.responses_added, first.comparisons_added, first.judgments_added) == (
        30, 60, 30, 30)
    with db.begin() as session:
        again = import_file(session, settings, jsonl(*[pair(i, winner="b") for i in range(25)]), system=True,
                            overlap=3)
        more = import_file(session, settings, jsonl(*[pair(i, winner="a") for i in range(20, 45)]), system=True)
    assert (again.comparisons_added, again.comparisons_existing, again.judgments_added) == (0, 25, 25)
    assert (more.comparisons_added, more.comparisons_existing, more.judgments_added) == (15, 10, 15)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Comparison)) == 45
        assert session.scalar(select(func.count()).select_from(Judgment)) == 70
        assert session.scalar(select(func.sum(Comparison.judgment_count))) == 70
        assert len(set(session.scalars(select(Comparison.id)))) == 45


def test_csv_chosen_rejected_holds_hh_transcripts_or_message_lists():
    transcript = hh("\n\nHuman: hi", "hello", "go away")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["chosen", "rejected"])
    writer.writerow([transcript["chosen"], transcript["rejected"]])
    parsed = parse_file(out.getvalue().encode(), filename="hh.csv")
    assert parsed.format == "hh" and parsed.problems == []
    assert parsed.comparisons[0].prompt == [{"role": "user", "content": "hi"}] and parsed.comparisons[0].line == 2
    user = {"role": "user", "content": "hi"}
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["chosen", "rejected"])
    writer.writerow([json.dumps([user, {"role": "assistant", "content": "hello"}]),
                     json.dumps([user, {"role": "assistant", "content": "go away"}])])
    parsed = parse_file(out.getvalue().encode(), filename="trl.csv")
    assert parsed.format == "trl" and parsed.problems == [] and parsed.comparisons[0].prompt == [user]


def test_overlapping_imports_at_the_same_time_both_succeed(db, settings):
    """A second import that starts while an overlapping one is still open waits for it and skips its rows."""
    import threading
    import time

    with db.begin() as session:
        boss = admin(session)
    results, errors = {}, []

    def second():
        try:
            with db.begin() as session:
                results["second"] = import_file(session, settings, jsonl(*(pair(i) for i in range(5, 15))),
                                                filename="second.jsonl", actor=boss)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    with db.begin() as session:
        results["first"] = import_file(session, settings, jsonl(*(pair(i) for i in range(10))),
                                       filename="first.jsonl", actor=boss)
        worker = threading.Thread(target=second)
        worker.start()
        time.sleep(0.5)  # the second import is now running against the first's uncommitted rows
    worker.join(timeout=60)
    assert not errors, errors
    assert results["first"].comparisons_added == 10
    assert (results["second"].comparisons_added, results["second"].comparisons_existing) == (5, 5)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Comparison)) == 15
        assert session.scalar(select(func.count()).select_from(Prompt)) == 15


def test_your_ids_come_back_in_both_exports(db, settings):
    from annotate import export

    rows = [pair(1, id="pair-1", prompt_id="p-1", response_a_id="r-1a", response_b_id="r-1b", winner="b"),
            pair(2, winner="a"),  # no ids: the export columns are empty, not invented
            {"prompt": "k", "id": "row-k", "responses": [{"text": "k0", "id": "k-0"}, {"text": "k1", "id": "k-1"}],
             "comparisons": [{"a": 1, "b": 0, "winner": "a"}]}]
    run_import(db, settings, jsonl(rows[0], rows[1]), filename="p.jsonl")
    run_import(db, settings, jsonl(rows[2]), filename="k.jsonl")
    # A second import of pair 1 under another id keeps the id the pair came with.
    run_import(db, settings, jsonl(pair(1, id="renamed", winner="b")), filename="again.jsonl")
    with db.begin() as session:
        boss = admin(session)
        prefs = {r["prompt"]: r for r in export.preference_rows(session, actor=boss)}
        raw = {r["prompt"]: r for r in export.judgment_rows(session, actor=boss)}
    one = prefs["prompt 1"]  # B won: chosen is B's text and B's id
    assert (one["chosen"], one["external_id"], one["prompt_external_id"]) == ("answer 1 b", "pair-1", "p-1")
    assert (one["chosen_external_id"], one["rejected_external_id"]) == ("r-1b", "r-1a")
    assert (raw["prompt 1"]["response_a_external_id"], raw["prompt 1"]["response_b_external_id"]) == ("r-1a", "r-1b")
    assert raw["prompt 1"]["external_id"] == "pair-1"
    k = prefs["k"]
    assert (k["chosen"], k["chosen_external_id"], k["rejected_external_id"], k["external_id"]) == \
        ("k1", "k-1", "k-0", "row-k")
    assert {key: prefs["prompt 2"][key] for key in ("external_id", "prompt_external_id", "chosen_external_id",
                                                   "rejected_external_id")} == dict.fromkeys(
        ("external_id", "prompt_external_id", "chosen_external_id", "rejected_external_id"))


IDS = ("external_id", "prompt_external_id", "chosen_external_id", "rejected_external_id", "source_tag")


@pytest.mark.parametrize("kind", ["preferences jsonl", "judgments jsonl", "judgments csv"])
def test_an_export_imported_into_another_database_keeps_the_ids_and_tags_it_was_given(db, settings, tmp_path,
                                                                                        kind):
    """An export's prompt_id is the exporting database's row id, which the pairs and TRL formats read as your
    prompt id: imported elsewhere, a pair came back with prompt id "1" and without its ids and tag
    (researcher dogfood run). It now reads the ids and tag the export carries."""
    from annotate import export, migrate
    from annotate.db import Database, create_db_engine

    rows = [pair(i, id=f"cmp-{i}", prompt_id=f"P-{i}", response_a_id=f"r{i}a", response_b_id=f"r{i}b",
                 tag="gen-v1", winner="b" if i % 2 else "a") for i in range(1, 4)]
    rows.append(pair(4, winner="a"))  # no ids, no tag: none invented on the way
    # A first pair, so that the pairs' own row ids (1, 2, ...) are not the order of the ids given.
    run_import(db, settings, jsonl({"prompt": "offset", "response_a": "x", "response_b": "y"}),
               filename="offset.jsonl")
    run_import(db, settings, jsonl(*rows), filename="ids.jsonl")
    what, format = kind.split()
    with db.begin() as session:
        boss = admin(session)
        data = (export.preferences_bytes(session, actor=boss, format=format) if what == "preferences"
                else export.judgments_bytes(session, actor=boss, format=format))
        before = {r["prompt"]: r for r in export.preference_rows(session, actor=boss)}

    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    migrate.upgrade(url)
    elsewhere = Database(create_db_engine(url))
    try:
        report = run_import(elsewhere, load_settings(environ={}, data_dir=tmp_path, database_url=url, env="test"),
                            data, filename=f"export.{format}")
        assert not [n for n in report.notes if "ignored" in n and ("prompt_external_id" in n or "source_tag" in n)]
        assert [n for n in report.notes if n.startswith("read as a prefloop export")], report.notes
        with elsewhere.begin() as session:
            after = {r["prompt"]: r for r in export.preference_rows(session, actor=admin(session))}
        with elsewhere.read() as session:
            ResponseA, ResponseB = aliased(Response), aliased(Response)
            stored = {(c.external_id, p.external_id, a.external_id, b.external_id, c.source_tag or p.source_tag)
                      for c, p, a, b in session.execute(
                          select(Comparison, Prompt, ResponseA, ResponseB)
                          .join(Prompt, Prompt.id == Comparison.prompt_id)
                          .join(ResponseA, ResponseA.id == Comparison.response_a_id)
                          .join(ResponseB, ResponseB.id == Comparison.response_b_id))}
    finally:
        elsewhere.dispose()
    assert before["prompt 1"]["prompt_external_id"] == "P-1" and before["prompt 1"]["source_tag"] == "gen-v1"
    assert before["prompt 1"]["prompt_id"] != 1  # the offset pair: internal and given ids differ
    # The raw judgment export has no winner column ("choice"): its pairs come back without judgments.
    expected = before if what == "preferences" else {}
    assert {p: {k: r[k] for k in IDS} for p, r in after.items()} == {
        p: {k: r[k] for k in IDS} for p, r in expected.items()}
    given = {(f"cmp-{i}", f"P-{i}", f"r{i}a", f"r{i}b", "gen-v1") for i in (1, 2, 3)}
    if what == "judgments":  # a / b as stored; a preference export gives chosen / rejected, in either order
        assert {g for g in stored if g[0]} == given
    else:
        assert {(c, p, *sorted((a, b)), t) for c, p, a, b, t in stored if c} == given


def test_only_a_real_export_is_read_as_one():
    """A file of yours with a prompt_external_id column (and 'source' as its tag) was read as a prefloop export:
    its prompt_id replaced, its response ids and tag dropped, with no note (review). Both of an export's
    marks are needed, and the notes say when a file is read so."""
    mine = pair(1, prompt_id="my-p1", response_a_id="ra", response_b_id="rb", source="gen-v2",
                prompt_external_id="legacy-77")
    [c] = parse_file(jsonl(mine)).comparisons
    assert (c.prompt_id, c.response_a_id, c.response_b_id, c.source_tag) == ("my-p1", "ra", "rb", "gen-v2")
    parsed = parse_file(jsonl({**mine, "comparison_id": 5, "source_tag": "gen-v1", "external_id": "cmp-1"}))
    [c] = parsed.comparisons
    assert (c.prompt_id, c.row_id, c.response_a_id, c.source_tag) == ("legacy-77", "cmp-1", None, "gen-v1")
    assert any(n.startswith("read as a prefloop export") and "line 1" in n for n in parsed.notes), parsed.notes


def test_a_preference_export_with_ties_imports_them_as_ties():
    """Exported with ties (or both-bad majorities) included, those rows have chosen = A and rejected = B and an
    is_tie / is_both_bad mark; read as "chosen wins" they became votes nobody gave (review)."""
    base = {"prompt": "p", "comparison_id": 1, "prompt_id": 1, "prompt_external_id": "", "external_id": "",
            "chosen_external_id": "", "rejected_external_id": "", "source_tag": "", "agreement": 1.0,
            "n_judgments": 1}
    rows = [{**base, "chosen": "a0", "rejected": "b0", "is_tie": True, "is_both_bad": False},
            {**base, "prompt": "q", "chosen": "a1", "rejected": "b1", "is_tie": False, "is_both_bad": True},
            {**base, "prompt": "r", "chosen": "a2", "rejected": "b2", "is_tie": False, "is_both_bad": False}]
    parsed = parse_file(jsonl(*rows))
    got = {c.prompt: c.winner for c in parsed.comparisons}
    assert (got["p"], got["q"]) == (Choice.tie, Choice.both_bad)
    [r] = [c for c in parsed.comparisons if c.prompt == "r"]  # unmarked: chosen won, whichever side it is on
    assert (r.response_a if r.winner is Choice.a else r.response_b) == "a2" and r.winner in (Choice.a, Choice.b)
    assert not [n for n in parsed.notes if "is_tie" in n or "is_both_bad" in n], parsed.notes


def test_judgments_before_the_first_retrain_record_random_order(db, settings):
    """Imported pairs are in seeded-random order, and a judgment made before any retrain says so."""
    from annotate import export, judgments, queue
    from annotate.campaign import get_options

    run_import(db, settings, jsonl(pair(1), pair(2), pair(3, winner="a")))
    with db.read() as session:
        provenance = {(c.priority_strategy, c.priority_score, c.priority_model_version_id)
                      for c in session.scalars(select(Comparison))}
    assert provenance == {("random", None, None)}

    with db.begin() as session:
        boss = admin(session)
        options = replace(get_options(session, settings), gold_rate=0.0, probe_rate=0.0)
        served = queue.next_comparison(session, settings, options, actor=boss)
        judgments.submit(session, settings, actor=boss, comparison_id=served.comparison_id, shown="left")
    with db.begin() as session:
        judged = session.scalar(select(Judgment).where(Judgment.annotator_id == boss.id))
        assert (judged.acquisition_strategy, judged.acquisition_score, judged.model_version_id) == \
            ("random", None, None)
        raw = [r for r in export.judgment_rows(session, actor=boss) if r["annotator"] == "boss"]
    assert [(r["acquisition_strategy"], r["acquisition_score"], r["model_version_id"]) for r in raw] == \
        [("random", None, None)]


MULTI_USER = {"role": "user", "content": "Plan a trip."}
MULTI_CHOSEN = [{"role": "assistant", "content": "Where to?"}, {"role": "user", "content": "Rome."},
                {"role": "assistant", "content": "Day 1: the Forum."}]


def test_trl_responses_of_several_messages_are_noted_and_come_back_with_their_roles(db, settings):
    """A response that is several messages is one text for annotators and its messages again in exports."""
    from annotate import export

    explicit = {"prompt": [MULTI_USER], "chosen": MULTI_CHOSEN,
                "rejected": [{"role": "assistant", "content": "No."}]}
    # Implicit prompt parting at a user turn: each tail starts with the user's message.
    shared = [MULTI_USER, {"role": "assistant", "content": "Where to?"}]
    implicit = {"chosen": [*shared, {"role": "user", "content": "Paris."}, {"role": "assistant", "content": "Louvre."}],
                "rejected": [*shared, {"role": "user", "content": "Oslo."}, {"role": "assistant", "content": "Fjords."}]}
    single = {"prompt": [MULTI_USER], "chosen": [{"role": "assistant", "content": "Go."}],
              "rejected": [{"role": "assistant", "content": "Stay."}]}
    data = jsonl(explicit, implicit, single)
    parsed = parse_file(data, filename="multi.jsonl")
    assert parsed.problems == []
    (note,) = [n for n in parsed.notes if "several messages" in n]
    assert note.startswith("2 rows") and "(lines 1, 2)" in note
    first = parsed.comparisons[0]
    chosen_text = first.response_a if first.winner is Choice.a else first.response_b
    assert chosen_text == "Where to?\n\nHuman: Rome.\n\nAssistant: Day 1: the Forum."

    run_import(db, settings, data, filename="multi.jsonl")
    with db.begin() as session:
        boss = admin(session)
        rows = export.preference_rows(session, actor=boss)
    by_chosen = {json.dumps(r["chosen"]): r for r in rows}
    assert len(rows) == 3
    one = by_chosen[json.dumps(MULTI_CHOSEN)]
    assert one["prompt"] == [MULTI_USER] and one["rejected"] == [{"role": "assistant", "content": "No."}]
    two = by_chosen[json.dumps([{"role": "user", "content": "Paris."}, {"role": "assistant", "content": "Louvre."}])]
    assert two["prompt"] == shared
    assert two["rejected"] == [{"role": "user", "content": "Oslo."}, {"role": "assistant", "content": "Fjords."}]
    assert json.dumps([{"role": "assistant", "content": "Go."}]) in by_chosen


def test_a_folder_is_named_as_a_folder_not_a_missing_file(db, settings, tmp_path):
    with pytest.raises(ImportValidationError, match="is a folder"):
        run_import(db, settings, tmp_path)


def test_overlap_defaults_to_the_campaigns_and_stops_at_the_apps_maximum(db, settings):
    """Without an overlap, an admin's saved campaign overlap applies (the Import page's default), not
    PREFLOOP_OVERLAP; 21 was accepted, leaving pairs no campaign setting can express."""
    from annotate import campaign
    from annotate.errors import PrefloopError
    from annotate.models import AppSetting

    with db.begin() as session:
        session.add(AppSetting(key="overlap", value=3))
    with pytest.raises(PrefloopError, match="overlap must be from 1 to 20"):
        run_import(db, settings, jsonl(pair(1)), overlap=campaign.MAX_OVERLAP + 1)
    run_import(db, settings, jsonl(pair(1)))
    with db.read() as session:
        assert session.scalar(select(Comparison.overlap_target)) == 3


def test_message_fields_other_than_role_and_content_are_noted_not_dropped_silently():
    """A chat message's 'name' or 'tool_calls' cannot be stored; the import said nothing about it."""
    user = {"role": "user", "content": "hi", "name": "alice"}
    row = {"chosen": [user, {"role": "assistant", "content": "hello!", "tool_calls": []}],
           "rejected": [user, {"role": "assistant", "content": "go away"}]}
    plain = {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
             "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}
    parsed = parse_file(jsonl(plain, row), filename="t.jsonl")
    assert not parsed.problems and len(parsed.comparisons) == 2
    [note] = [n for n in parsed.notes if "fields other than" in n]
    assert note.startswith("1 row has messages with fields other than 'role' and 'content' ('name', 'tool_calls'; "
                           "line 2)")
    assert not [n for n in parse_file(jsonl(plain), filename="t.jsonl").notes if "fields other than" in n]


# --------------------------------------------------------------------------- fields no format reads

USER = {"role": "user", "content": "q"}


def said(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def json_array(*rows) -> bytes:
    """A .json array with row n on line n, as jsonl() puts it."""
    return ("[" + ",\n".join(json.dumps(r) for r in rows) + "]\n").encode()


def ignored_note(parsed) -> str | None:
    notes = [n for n in parsed.notes if n.startswith("ignored field")]
    assert len(notes) <= 1, notes
    return notes[0] if notes else None


UNKNOWN_FIELDS = {
    "pairs": ([pair(1, winer="a"), pair(2, winer="b", extra=1), pair(3)],
              "ignored field(s) in 2 rows (lines 1, 2): 'winer' (2 rows; did you mean 'winner'?), 'extra' (1 row)"),
    "kwise": ([{"prompt": "p", "responses": ["x", "y"]},
               {"prompt": "p2", "tags": "t",
                "responses": [{"text": "x", "generater": "m", "model": "m"}, {"text": "y", "model": "m"}],
                "comparisons": [{"a": 0, "b": 1, "winner": "a", "why": "clearer"}]}],
              "ignored field(s) in 1 row (line 2): 'tags' (1 row; did you mean 'tag'?), "
              "'responses[].generater' (1 row; did you mean 'generator'?), 'responses[].model' (1 row), "
              "'comparisons[].why' (1 row)"),
    "trl": ([{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 8.0, "score_rejected": 3.5},
             {"prompt": "q2", "chosen": "a", "rejected": "b", "score_chosen": 7.0, "score_rejected": 1.0}],
            "ignored field(s) in 2 rows (lines 1, 2): 'score_chosen' (2 rows), 'score_rejected' (2 rows)"),
    "trl conversational": ([{"prompt": [USER], "chosen": said("a"), "rejected": said("b"), "promt_id": "p-1"}],
                           "ignored field(s) in 1 row (line 1): 'promt_id' (1 row; did you mean 'prompt_id'?)"),
    "trl implicit prompt": ([{"chosen": [USER, *said("a")], "rejected": [USER, *said("b")], "metdata": {}}],
                            "ignored field(s) in 1 row (line 1): 'metdata' (1 row; did you mean 'metadata'?)"),
    "hh": ([{**hh("\n\nHuman: q", "a", "b"), "Source": "x", "metadata": {"k": 1}}],
           "ignored field(s) in 1 row (line 1): 'Source' (1 row; did you mean 'source'?), 'metadata' (1 row)"),
}


@pytest.mark.parametrize("rows", [jsonl, json_array], ids=["jsonl", "json"])
@pytest.mark.parametrize("case", list(UNKNOWN_FIELDS))
def test_fields_no_format_reads_are_noted_once_with_their_rows_and_a_likely_spelling(case, rows):
    """A misspelt 'winner' imported no judgment, and JSON rows' unknown fields were dropped without a word."""
    data, expected = UNKNOWN_FIELDS[case]
    parsed = parse_file(rows(*data), filename=f"x.{rows.__name__.replace('_array', '')}")
    assert parsed.problems == [] and parsed.format == case.split()[0]
    assert ignored_note(parsed) == expected


def test_every_field_the_formats_read_is_silent():
    full_pair = pair(1, id="c1", prompt_id="p1", response_a_id="a1", response_b_id="b1", generator_a="m1",
                     generator_b="m2", metadata={"k": 1}, source="s", tag="t", winner="a")
    kwise = {"prompt": "p", "id": "c2", "prompt_id": "p2", "metadata": {}, "source": "s", "tag": "t",
             "responses": [{"text": "x", "id": "r1", "generator": "m", "metadata": {"k": 1}}, "y"],
             "comparisons": [{"a": 0, "b": 1, "winner": "b"}]}
    trl = {"prompt": "q", "chosen": "a", "rejected": "b", "id": "c3", "prompt_id": "p3", "metadata": {},
           "source": "s", "tag": "t"}
    implicit = {"chosen": [USER, *said("a")], "rejected": [USER, *said("b")], "id": "c4", "metadata": {}}
    hh_row = {**hh("\n\nHuman: q", "a", "b"), "id": "c5", "source": "s", "tag": "t"}
    for rows in ([full_pair], [kwise], [trl, implicit], [hh_row]):
        parsed = parse_file(jsonl(*rows), filename="x.jsonl")
        assert parsed.problems == [] and ignored_note(parsed) is None, parsed.notes


def test_message_fields_are_noted_by_their_own_note_not_twice():
    row = {"prompt": [{**USER, "name": "alice"}], "chosen": said("a"), "rejected": said("b")}
    parsed = parse_file(jsonl(row), filename="t.jsonl")
    assert ignored_note(parsed) is None
    assert [n for n in parsed.notes if "fields other than 'role' and 'content' ('name'" in n]


def test_csv_note_suggests_the_column_a_misspelling_meant():
    parsed = parse_file(b"prompt,response_a,response_b,winer,extra\nq,x,y,a,1\n", filename="p.csv")
    assert parsed.comparisons[0].winner is None
    assert "ignored CSV column(s): winer (did you mean winner?), extra" in parsed.notes
    assert ignored_note(parsed) is None


def test_cli_import_prints_the_ignored_fields_note(tmp_path, sqlite_url, monkeypatch, capsys):
    monkeypatch.setenv("PREFLOOP_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "data"))
    path = tmp_path / "winer.jsonl"
    path.write_bytes(jsonl(pair(1, winer="a")))
    assert cli.main(["import", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0 imported judgments" in out
    assert "ignored field(s) in 1 row (line 1): 'winer' (1 row; did you mean 'winner'?)" in out


def admin_import_page(sqlite_url, tmp_path, monkeypatch):
    """The admin Import page (AppTest) over a new SQLite database at ``sqlite_url``, an admin logged in."""
    from annotate.db import Database, create_db_engine
    from tests.ui.conftest import open_page

    monkeypatch.setenv("PREFLOOP_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PREFLOOP_ENV", "test")
    database = Database(create_db_engine(sqlite_url))
    with database.begin() as session:
        boss = admin(session)
    database.dispose()
    return open_page(boss, "admin_import.py")


def test_admin_import_page_shows_the_ignored_fields_note(sqlite_url, tmp_path, monkeypatch):
    """The note reaches the Import page twice: in the preview and in the summary after importing."""
    at = admin_import_page(sqlite_url, tmp_path, monkeypatch)
    at.file_uploader(key="import_file").upload("winer.jsonl", jsonl(pair(1, winer="a")), "application/jsonl")
    at.run()
    note = "ignored field(s) in 1 row (line 1): 'winer' (1 row; did you mean 'winner'?)"
    assert note in [i.value for i in at.info]
    next(b for b in at.button if b.label == "Import").click()
    at.run()
    assert not at.exception, at.exception
    (summary,) = [s.value for s in at.success]
    assert summary.startswith("pairs: 1 row; added 1 comparison") and note in summary


@pytest.mark.parametrize(("row", "problem"), [
    ({"prompt": "q", "respone_a": "x", "response_b": "y"},
     "missing field 'response_a' (found 'respone_a': did you mean 'response_a'?)"),
    ({"prompt": "q", "chosen": "x", "rejcted": "y"},
     "missing field 'rejected' (found 'rejcted': did you mean 'rejected'?)"),
    ({"promt": "q", "respons_a": "x", "respons_b": "y"},
     "unrecognised row (fields: promt, respons_a, respons_b; did you mean 'prompt', 'response_a', 'response_b'?); "
     f"accepted formats: {ingest.FORMAT_HELP}"),
    ({"prompt": "p", "responses": [{"txt": "x"}, "y"]},
     "responses[0] needs a 'text' field (found 'txt': did you mean 'text'?)"),
    ({"prompt": "p", "responses": ["x", "y"], "comparisons": [{"a": 0, "b": 1, "winer": "a"}]},
     "comparisons[0] has no winner (found 'winer': did you mean 'winner'?)"),
    ({"prompt": [{"role": "user", "contnet": "hi"}], "response_a": "x", "response_b": "y"},
     "prompt[0].content must be a string, not null (found 'contnet': did you mean 'content'?)"),
    ({"prompt": "q", "chosen": [{"Role": "assistant", "content": "a"}], "rejected": said("b")},
     "chosen[0] has role None; roles are user, assistant, system (found 'Role': did you mean 'role'?)"),
], ids=["pairs", "trl", "unrecognised", "kwise response", "kwise outcome", "message content", "message role"])
def test_a_row_refused_for_a_missing_field_names_the_misspelling(row, problem):
    try:
        problems = parse_file(jsonl(row), filename="x.jsonl").problems
    except ImportValidationError as exc:  # no row of a known format: a file-level error, with the rows' problems
        problems = exc.problems
    assert problems == [(1, problem)]


# --------------------------------------------------------------------------- counts in words


def test_summary_notes_and_problems_separate_thousands():
    """A 200k-row import said "added 100000 comparisons (100000 already present)"."""
    report = ImportReport(format="hh", rows=200_000, prompts_added=99_914, responses_added=200_000,
                          comparisons_added=100_000, comparisons_existing=100_000, judgments_added=1_000,
                          gold_added=0)
    assert report.summary() == ("hh: 200,000 rows; added 100,000 comparisons (100,000 already present), "
                                "99,914 prompts, 200,000 responses, 1,000 imported judgments, 0 gold pairs.")
    [note] = parse_file(jsonl(*[pair(1)] * 1012), filename="d.jsonl").notes
    assert note.startswith("1,011 duplicate comparisons (lines 2, 3,") and "(1,001 more)" in note
    message = ingest.problems_message([(line, "bad") for line in range(1, 1222)])
    assert message.startswith("1,221 problems; nothing was imported.") and message.endswith("... and 1,201 more")


def test_summary_and_notes_say_1_row_not_1_rows(db, settings):
    report = run_import(db, settings, jsonl(pair(1, winner="a")), filename="one.jsonl")
    assert report.summary().split("\n")[0] == (
        "pairs: 1 row; added 1 comparison (0 already present), 1 prompt, 2 responses, 1 imported judgment, "
        "0 gold pairs.")
    assert report.notes[0].startswith("1 new comparison already has the 1 judgment it needs from the file's "
                                      "known winners, so annotators will not see it;")
    gold = run_import(db, settings, jsonl(pair(1, winner="b"), pair(2)), known_winner="gold")
    assert "1 comparison already existed; its known outcome was not turned into a gold answer" in gold.notes
    parsed = parse_file(jsonl(pair(1), pair(1)), filename="d.jsonl")
    assert parsed.notes == ["1 duplicate comparison (line 2) repeats an earlier row and is imported once"]
    divergent = {"chosen": "\n\nHuman: q\n\nAssistant: A\n\nHuman: thanks", "rejected": "\n\nHuman: q\n\nAssistant: "}
    notes = parse_file(jsonl(divergent), filename="h.jsonl").notes
    assert notes[0].startswith("1 HH row has more 'Human:'/'Assistant:' turns") and "(line 1)" in notes[0]
    assert notes[1] == "1 HH row has an empty response (line 1): kept as empty text"
    bad_csv = parse_file(b"prompt,response_a,response_b\nonly one cell\n", filename="p.csv")
    assert bad_csv.problems == [(2, "has 1 cell but the header has 3 columns")]
