"""Files that are not text (Parquet, Excel, other archives) are named in one line, not read as CSV."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotate import cli, ingest
from annotate.errors import ImportValidationError

ROWS = [{"prompt": f"p{i}", "response_a": "x", "response_b": f"y{i}", "winner": "a"} for i in range(3)]


def _parquet() -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ROWS), out)
    return out.getvalue()


def _zip() -> bytes:  # an .xlsx workbook is a zip archive
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("xl/workbook.xml", "<workbook/>")
    return out.getvalue()


JSONL = "".join(json.dumps(r) + "\n" for r in ROWS).encode()


@pytest.mark.parametrize("name, data, what", [
    ("pairs.parquet", _parquet(), "a Parquet file"),
    ("pairs.parquet.gz", gzip.compress(_parquet()), "a Parquet file"),
    ("pairs.xlsx", _zip(), "a zip archive"),
    ("pairs.jsonl.xz", lzma.compress(JSONL), "xz-compressed"),
    ("pairs.jsonl.bz2", bz2.compress(JSONL), "bzip2-compressed"),
])
def test_a_binary_file_is_named_not_read_as_csv(name, data, what):
    with pytest.raises(ImportValidationError) as caught:
        ingest.parse_file(data, filename=name)
    message = str(caught.value)
    assert message.startswith(f"{name} is {what}") and "not an import format" in message
    assert "JSON Lines, JSON or CSV" in message and "nothing was imported" in message
    assert "CSV columns" not in message and not caught.value.problems


@pytest.mark.parametrize("first", ["PAR1 question", "BZh91AY&SY", "PK\x03 zip-like"])
def test_text_starting_with_a_magic_prefix_is_still_text(first):
    data = f"{first},response_a,response_b,winner\n{first},x,y,a\n".encode()
    with pytest.raises(ImportValidationError) as caught:  # read as CSV: its header names no format
        ingest.parse_file(data, filename="pairs.csv")
    assert "CSV columns" in str(caught.value) and "not an import format" not in str(caught.value)
    ok = ingest.parse_file(b"prompt,response_a,response_b,winner\n" + data, filename="pairs.csv")
    assert [c.prompt for c in ok.comparisons][:1] == [first]


def test_the_cli_says_it_in_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "pairs.parquet"
    path.write_bytes(_parquet())
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert cli.main(["import", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: pairs.parquet is a Parquet file, not an import format: give JSON Lines, "
                                "JSON or CSV, optionally gzip-compressed (.gz) (pandas.read_parquet(path).to_json("
                                "out, orient='records', lines=True) converts it); nothing was imported"]
