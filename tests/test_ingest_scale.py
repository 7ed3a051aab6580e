"""Importing big files: what an import holds in memory, and that reading a file line by line reads it as a
whole file was read (CSV line ends, gzip errors, the recorded file hash). Times are in bench/import_scale.py."""

from __future__ import annotations

import gc
import gzip
import hashlib
import json
import tracemalloc
from dataclasses import replace

import pytest
from sqlalchemy import select

from annotate import cli, ingest
from annotate.errors import ImportValidationError
from annotate.ingest import ParsedComparison, import_file, parse_file
from annotate.models import ImportBatch


def pairs_jsonl(n: int) -> bytes:
    return b"".join(json.dumps({"prompt": f"prompt {i}", "response_a": f"answer {i} a " + "x" * 200,
                                "response_b": f"answer {i} b", "winner": "a"}).encode() + b"\n" for i in range(n))


def peak_of(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_import_does_not_reserve_memory_for_the_whole_upload_limit(sqlite_db, sqlite_settings, tmp_path):
    # Reading with read(limit + 1) allocated the whole limit (here 1 GB) whatever the file's size.
    settings = replace(sqlite_settings, max_upload_mb=1024)
    path = tmp_path / "small.jsonl"
    path.write_bytes(pairs_jsonl(20))
    compressed = gzip.compress(pairs_jsonl(40))

    def run(source, name):
        with sqlite_db.begin() as session:
            import_file(session, settings, source, filename=name, system=True)

    assert peak_of(lambda: run(path, "small.jsonl")) < 64 * 2**20
    assert peak_of(lambda: run(compressed, "small.jsonl.gz")) < 64 * 2**20
    assert peak_of(lambda: parse_file(compressed, filename="small.jsonl.gz", max_bytes=2**30)) < 64 * 2**20


def test_while_writing_an_import_holds_neither_the_file_nor_a_list_of_every_comparison(
        sqlite_db, sqlite_settings, tmp_path, monkeypatch):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(pairs_jsonl(3000))  # about 0.8 MB
    size = path.stat().st_size
    seen = {}
    write = ingest._write

    def spy(*args, **kwargs):
        gc.collect()
        seen["comparisons"] = sum(isinstance(o, ParsedComparison) for o in gc.get_objects())
        seen["largest"] = max(trace.size for trace in tracemalloc.take_snapshot().traces)
        return write(*args, **kwargs)

    monkeypatch.setattr(ingest, "_write", spy)
    tracemalloc.start()
    try:
        with sqlite_db.begin() as session:
            report = import_file(session, sqlite_settings, path, system=True)
    finally:
        tracemalloc.stop()
    assert report.comparisons_added == 3000 and report.judgments_added == 3000
    assert seen["comparisons"] == 0
    assert seen["largest"] < size / 2  # no copy of the file's bytes or text


def test_a_corrupt_gzip_file_is_a_clear_problem_not_a_traceback(sqlite_url, tmp_path, monkeypatch, capsys):
    data = gzip.compress(pairs_jsonl(200))
    corrupt = data[:20] + b"\xff\xff\xff\xff" + data[24:]  # zlib.error, which is not an OSError
    with pytest.raises(ImportValidationError, match="cannot be decompressed"):
        parse_file(corrupt, filename="c.jsonl.gz")
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(corrupt)
    monkeypatch.setenv("PREFLOOP_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["import", str(path)]) == 2
    err = capsys.readouterr().err
    assert "cannot be decompressed" in err and "nothing was imported" in err


def test_csv_line_ends_and_line_numbers_are_those_of_the_whole_file():
    # A lone CR ends a CSV line (as for a file opened with newline=''); CRLF is one line end; a quoted cell
    # keeps its line breaks; problems name the line where their row starts.
    text = ('prompt,response_a,response_b,winner\r\n'
            'p1,a1,b1,a\r'
            'p2,"two\nlines",b2,b\r\n'
            'p3,a3,b3,nope\n'
            '"p\r\n4",a4,b4,\n')
    parsed = parse_file(text.encode(), filename="x.csv")
    assert parsed.problems == [(5, "unknown winner 'nope'; use one of a, b, tie, both_bad")]
    assert [(c.line, c.prompt, c.response_a) for c in parsed.comparisons] == [
        (2, "p1", "a1"), (3, "p2", "two\nlines"), (6, "p\r\n4", "a4")]


def test_a_bom_and_a_bad_line_are_read_as_before_and_the_file_hash_is_of_the_bytes_given(
        sqlite_db, sqlite_settings, tmp_path):
    rows = pairs_jsonl(3)
    parsed = parse_file(b"\xef\xbb\xbf" + rows + b'{"prompt": "caf\xe9"}\n' + rows, filename="b.jsonl")
    assert {line for line, _ in parsed.problems} == {4} and "UTF-8" in parsed.problems[0][1]
    assert [c.line for c in parsed.comparisons] == [1, 2, 3, 5, 6, 7] and parsed.comparisons[0].prompt == "prompt 0"
    compressed = gzip.compress(pairs_jsonl(5))
    path = tmp_path / "p.jsonl.gz"
    path.write_bytes(compressed)
    for source in (path, compressed, pairs_jsonl(7)):
        with sqlite_db.begin() as session:
            import_file(session, sqlite_settings, source, filename="p.jsonl.gz", system=True)
    with sqlite_db.read() as session:
        hashes = session.scalars(select(ImportBatch.file_hash).order_by(ImportBatch.id)).all()
    assert hashes == [hashlib.sha256(compressed).hexdigest()] * 2 + [hashlib.sha256(pairs_jsonl(7)).hexdigest()]
