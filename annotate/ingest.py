"""Importing preference data: parse and validate a file, then write it in bulk.

Accepted formats (JSON Lines, ``.jsonl.gz``, ``.json`` arrays or CSV):

``pairs``
    ``prompt``, ``response_a``, ``response_b``; optional ``id``, ``prompt_id``,
    ``response_a_id``, ``response_b_id``, ``generator_a``, ``generator_b``,
    ``metadata`` (object), ``source``/``tag``, a known ``winner``
    (``a``, ``b``, ``tie``, ``both_bad``) and the ``annotator`` who gave it.
    A and B keep the file's order.
``kwise``
    ``prompt`` and ``responses`` (strings or objects with ``text`` and optional
    ``generator``, ``id``, ``metadata``), optional known outcomes
    ``comparisons: [{"a": i, "b": j, "winner": ...}]``, each with an optional
    ``annotator`` (else the row's). Every unordered pair
    of responses becomes a comparison, A being the lower index; a row may
    hold up to :data:`MAX_KWISE_RESPONSES` responses.
``trl``
    TRL's preference format: ``prompt``/``chosen``/``rejected`` as text or as
    message lists, or the implicit-prompt form (only ``chosen``/``rejected``
    message lists whose shared prefix is the prompt). The chosen side wins.
    A response of more than one assistant message is stored as its
    :func:`render_messages` text, its messages kept in its metadata for the
    exports; such rows are counted in the notes.
``hh``
    Anthropic HH-RLHF transcripts: ``chosen``/``rejected`` strings of
    ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` turns. The shared conversation up
    to the last ``\\n\\nAssistant:`` the two share becomes the prompt (chat
    messages), the rest the two responses, later turns included as written
    (noted).

A prompt is a string or a list of ``{"role": "user"|"assistant"|"system",
"content": str}`` messages (in CSV a JSON list in the cell). For ``trl`` and
``hh`` A/B is ordered by the responses' content hash, so position carries no
label.

Fields a format does not read (a misspelt ``winner``, a dataset's own columns, a k-wise response's
or outcome's other keys) are not stored; one note names them with the rows that give each, and the
known field a name looks like a misspelling of. A row refused for a missing field names such a
misspelling too.

Every format with a known winner takes the ``annotator`` who gave it (your id for the person, stored as
``Judgment.external_annotator``). Imported judgments without one count once per comparison and answer; with
one, once per comparison and rater: a rater's repeat adds nothing, a later import of another answer from
them supersedes their earlier one, and two answers from one rater for one pair in one file are a problem.

Your own ids are kept: a row's ``id`` on the comparisons it adds
(``Comparison.external_id``; when a pair is already there, it keeps the id it
came with), ``prompt_id`` on the prompt and the response ids on the
responses (the first import to add each keeps its id). Exports give them back
as ``external_id``, ``prompt_external_id`` and the response columns' ids.

:func:`parse_file` is pure (no database); so is :func:`prepare_import`, which
validates every row for :func:`import_file` before any database work (on SQLite
the write lock is taken at a transaction's first statement, so annotators keep
saving while a file is read). :func:`import_file` writes nothing if any row is
bad, then inserts in bulk (COPY on PostgreSQL; on SQLite, executemany of the rows as prepare_import built
them, so little but SQLite's own work happens under its write lock) with batched existence checks by
content hash, so importing the same content again adds nothing. Both read the
file line by line (a ``.json`` array is read whole); an import holds each
distinct text once, with the hashes, until it is written. One file may give up to :data:`MAX_FILE_COMPARISONS` comparisons.

The JSON must be strict: ``NaN``, ``Infinity`` and numbers too large for a
float (which Python's json reads but PostgreSQL and other readers do not) are
row problems, as is JSON nested too deeply to read and ``metadata`` nested
deeper than :data:`MAX_JSON_DEPTH` levels. A NUL character (``\\u0000``) in a
text, message, id, generator, tag or metadata string is a row problem on every
backend (PostgreSQL cannot store one).
"""

from __future__ import annotations

import csv
import difflib
import functools
import gzip
import hashlib
import heapq
import io
import itertools
import json
import math
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple

from sqlalchemy import bindparam, case, column, func, insert, select, update
from sqlalchemy import table as table_clause
from sqlalchemy import text as sql_text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from annotate import campaign
from annotate.accounts import Actor, audit, require_admin
from annotate.errors import ImportValidationError, PrefloopError
from annotate.locks import advisory_key
from annotate.models import (
    Choice,
    Comparison,
    ComparisonStatus,
    ImportBatch,
    Judgment,
    JudgmentSource,
    JudgmentState,
    Prompt,
    Response,
    User,
    utcnow,
)
from annotate.settings import Settings

FORMATS = ("pairs", "kwise", "trl", "hh")
FORMAT_HELP = (
    "pairs (prompt, response_a, response_b[, winner]), "
    "kwise (prompt, responses[, comparisons]), "
    "trl (prompt, chosen, rejected - or chosen/rejected message lists with a shared prompt prefix), "
    "hh (chosen/rejected '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts)"
)
CSV_COLUMNS = {
    "pairs": ("prompt", "response_a", "response_b"),
    "kwise": ("prompt", "responses"),
    "trl": ("prompt", "chosen", "rejected"),
    "hh": ("chosen", "rejected"),
}
OPTIONAL_FIELDS = {
    "pairs": {"id", "prompt_id", "response_a_id", "response_b_id", "generator_a", "generator_b",
              "metadata", "source", "tag", "winner", "annotator"},
    "kwise": {"id", "prompt_id", "comparisons", "metadata", "source", "tag", "annotator"},
    "trl": {"id", "prompt_id", "chosen_id", "rejected_id", "metadata", "source", "tag", "annotator"},
    "hh": {"id", "source", "tag", "annotator"},
}
OWN_EXPORT_MARK = ("prompt_external_id", "comparison_id")
"""Columns every prefloop export writes (preference and raw judgment exports alike): a row with both is read
as one (:func:`_from_own_export`), and the import's notes say so. One alone is not enough: a file of yours
may well have a ``prompt_external_id``."""
OWN_EXPORT_IDS = {"prompt_external_id": "prompt_id", "external_id": "id", "source_tag": "tag",
                  "response_a_external_id": "response_a_id", "response_b_external_id": "response_b_id",
                  "chosen_external_id": "chosen_id", "rejected_external_id": "rejected_id"}
"""In a prefloop export, the columns holding the ids and tag a file gave, and the fields an import reads them as."""
OWN_IDS = ("prompt_id", "comparison_id", "judgment_id", "response_a_id", "response_b_id", "source")
"""In a prefloop export, the exporting database's own row ids, meaningless to another database, and the raw
judgment export's ``source`` (``annotator`` or ``imported``: who judged, not a tag): never read."""
OWN_OUTCOMES = {"is_tie": Choice.tie, "is_both_bad": Choice.both_bad}
"""A preference export's columns for the rows whose majority was a tie or both bad (when asked for)."""
OWN_WINNER = "\x00own-export winner"
"""Where :func:`_from_own_export` leaves such a row's winner for the parse (a key no JSON file gives)."""
OWN_ROW = "\x00own-export row"
"""Marks a row of prefloop's own export for the parse (a key no JSON file gives): its responses come from a
database, which keeps empty ones (HH has them), so an empty ``response_a`` / ``response_b`` is read as one
(a raw judgment export of such a pair was refused: "response_b is empty")."""
OWN_KEYS = (OWN_WINNER, OWN_ROW)
CSV_GUARDED = ("=", "+", "-", "@", "\t", "\r", "'")
"""An exported CSV cell starting with one of these gets a leading "'", so a spreadsheet shows it as text and
runs no formula. "'" is among them, so a cell that is "'" and then one of these is always a guarded value:
import takes the "'" off such a cell of its own export, and leaves "'Twas" (an older export, before "'" was
guarded) as it is."""
ROW_FIELDS = {name: set(CSV_COLUMNS[name]) | OPTIONAL_FIELDS[name] for name in FORMATS}
"""Every top-level field each format reads; other fields are named in the notes (see :class:`_IgnoredFields`)."""
ALL_ROW_FIELDS = tuple(sorted(set().union(*ROW_FIELDS.values())))
RESPONSE_FIELDS = ("text", "id", "generator", "metadata")
"""The fields of a k-wise response object."""
OUTCOME_FIELDS = ("a", "b", "winner", "annotator")
"""The fields of a k-wise ``comparisons`` entry."""
MESSAGE_FIELDS = ("role", "content")
ROLES = ("user", "assistant", "system")
WINNERS = {c.value: c for c in Choice}
HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}
_TEXT_LABEL = {"user": "Human", "assistant": "Assistant", "system": "System"}
RESPONSE_MESSAGES = "messages"
"""The response metadata key holding a response given as several messages (see :func:`render_messages`)."""
MAX_TAG_CHARS = 128
MAX_ID_CHARS = 256
MAX_REPORTED = 20
MAX_PROBLEMS_KEPT = 1000
"""Row problems a parse keeps (the first by line) to list; the others are only counted (``problem_count``,
``ImportValidationError.count``). Every line of a file can be a problem, at some 185 bytes each, and gzip
shrinks a file of repeated bad lines a thousandfold: kept, every problem of the 200 MB a ~200 KB upload may
decompress to came to some 18 GB."""
MAX_PROBLEMS_COUNTED = 1_000_000
"""A file with this many row problems is read no further (``stopped_at``), and its count is a lower bound
("at least"). Counting on says nothing more (one import adds at most :data:`MAX_FILE_COMPARISONS`) and takes
minutes: some 2-4 us a bad line, 100 million of them in 200 MB of "1" lines."""
MAX_KWISE_RESPONSES = 32
"""Responses one k-wise row may hold. Every pair becomes a comparison, so k responses give k(k-1)/2 and
the cost grows with the square: 32 give 496 (about 240 KB while parsing), where 1000 in an 8 KB row would
give 499,500 (231 MiB). Real k-wise sets have 4 to 9 responses per prompt (UltraFeedback 4, Nectar 7); 32
leaves room for best-of-n sets while bounding what one row can cost. Split a bigger set over rows."""
MAX_FILE_COMPARISONS = 500_000
"""Comparisons one file may give (counting k-wise pairs and repeats). An import holds them all in memory,
about 3 KB each at its peak, so this bounds one import to a gigabyte or two. It is above the larger public
sets (HH-RLHF's 161k pairs, UltraFeedback's 64k prompts x 6 pairs), and a 200 MB file of ordinary pairs
stays under it; a bigger set is imported as several files (re-importing skips what is there)."""
MAX_JSON_DEPTH = 64
"""How deeply a row's free-form ``metadata`` may nest (the object itself is level 1). Real metadata is a
few levels deep; without a bound, metadata nested some 990 levels parses but then fails json.dumps with
RecursionError when stored or exported."""
_CHUNK = 1000
_INSERT_BATCH = 2000
_COPY_BATCH = 20_000
"""Rows per COPY on PostgreSQL: each batch is one COPY into a staging table and one INSERT ... SELECT."""
ANALYZE_AFTER_ROWS = 1000


def content_hash(value: str | bytes) -> str:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()


def prompt_hash(prompt: str | list[dict]) -> str:
    """sha256 of a canonical JSON of the prompt text or its messages (role, content)."""
    body = {"text": prompt} if isinstance(prompt, str) else {"messages": prompt}
    return content_hash(json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")))


def seeded_priority(seed: int, p_hash: str, hash_a: str, hash_b: str) -> float:
    """A reproducible pseudo-random queue priority in [0, 1) for one comparison."""
    lo, hi = sorted((hash_a, hash_b))
    digest = hashlib.sha256(f"{seed}:{p_hash}:{lo}:{hi}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _flip(choice: Choice | None) -> Choice | None:
    if choice is Choice.a:
        return Choice.b
    if choice is Choice.b:
        return Choice.a
    return choice


@dataclass(frozen=True)
class ParsedComparison:
    """One candidate comparison read from a file, in canonical A/B order.

    ``winner`` is the known outcome in those canonical terms (None when the
    file gives none), ``annotator`` the rater the file names for it (read only
    with a winner). ``line`` is the 1-based line where the row starts.
    """

    line: int
    prompt: str | list[dict]
    response_a: str
    response_b: str
    winner: Choice | None = None
    annotator: str | None = None
    prompt_id: str | None = None
    row_id: str | None = None
    response_a_id: str | None = None
    response_b_id: str | None = None
    generator_a: str | None = None
    generator_b: str | None = None
    response_a_meta: dict | None = None
    response_b_meta: dict | None = None
    metadata: dict | None = None
    source_tag: str | None = None
    prompt_hash: str = ""
    hash_a: str = ""
    hash_b: str = ""

    def __post_init__(self) -> None:
        if not self.prompt_hash:
            object.__setattr__(self, "prompt_hash", prompt_hash(self.prompt))
        if not self.hash_a:
            object.__setattr__(self, "hash_a", content_hash(self.response_a))
        if not self.hash_b:
            object.__setattr__(self, "hash_b", content_hash(self.response_b))

    @property
    def pair_key(self) -> tuple[str, str, str]:
        """The unordered pair: (prompt hash, lower response hash, higher response hash)."""
        lo, hi = sorted((self.hash_a, self.hash_b))
        return self.prompt_hash, lo, hi


class _Conflict(NamedTuple):
    """Rows giving one comparison different known winners: where a later one does, and where the first that
    gave it another did ('line 5', or 'line 1, element 3' in a one-line JSON array)."""

    where: str
    first: str
    separate: bool
    """Both rows name a rater (different ones: one rater's two answers are a problem), so each is a vote."""
    pair: tuple[str, str, str]


class _Key(NamedTuple):
    prompt_hash: str
    hash_a: str
    hash_b: str


@dataclass(frozen=True)
class PairKeys:
    """A file's distinct pairs as an import stores them: (prompt hash, lower response hash, higher), a prompt
    given in both forms (text, and a chat of that one user turn) under the hash it has first; and each stored
    prompt hash's other form (None: it has none)."""

    pairs: set[_Key]
    other_form: dict[str, str | None]


@dataclass
class ParsedFile:
    """The result of :func:`parse_file`: comparisons, or the problems that stop an import."""

    format: str
    comparisons: list[ParsedComparison]
    """Every comparison read, or the first ``keep_first`` of them (see :func:`parse_file`)."""
    problems: list[tuple[int, str]]
    """The first :data:`MAX_PROBLEMS_KEPT` row problems, by line; ``problem_count`` says how many there are."""
    notes: list[str]
    rows: int = 0
    """Data rows read (k-wise rows yield several comparisons each)."""
    comparison_count: int = 0
    """Distinct comparisons read, kept or not (rows repeating a pair, several raters' say, count it once)."""
    known_count: int = 0
    """Of those, the ones with a known winner."""
    votes: dict[tuple[int, bool], int] = field(default_factory=dict)
    """Comparisons with known winners by (votes an import makes of them, whether one answer has a majority): a
    rater's answer is a vote, as is each different answer of rows that name no rater."""
    conflicts: list[_Conflict] = field(default_factory=list)
    """Where rows give a comparison different known winners; :func:`parse_file` notes them."""
    rater_conflicts: list[tuple[int, str]] = field(default_factory=list)
    """Rows where a rater gives a comparison another winner than an earlier row did, as problems: which
    answer is final cannot be told. :func:`parse_file` adds them to ``problems``, and so does an import
    unless it makes gold pairs (which do not read the rater, and refuse any pair given two answers). The first
    :data:`MAX_PROBLEMS_KEPT`, as of ``problems``; ``rater_conflict_count`` says how many there are."""
    rated_count: int = 0
    """Of the comparisons with a known winner, the ones that name its rater (``annotator``)."""
    raters: int = 0
    """The distinct raters those name."""
    problem_count: int = -1
    """The row problems found, listed in ``problems`` or not (``len(problems)`` when not given)."""
    rater_conflict_count: int = -1
    """The rows ``rater_conflicts`` stands for (``len(rater_conflicts)`` when not given)."""
    stopped_at: int | None = None
    """The last line read when reading stopped at :data:`MAX_PROBLEMS_COUNTED` problems: the rows, comparisons,
    notes and ``problem_count`` (then a lower bound) are those of the lines up to it."""
    other_forms: dict[str, str | None] = field(default_factory=dict, repr=False)
    """Each prompt hash the file's pairs are stored under, and that prompt's hash in its other form (None: it has
    none): what an import looks up beside it (:class:`_PromptForms`)."""
    pair_keys: PairKeys | None = field(default=None, repr=False)
    """The file's distinct pairs as an import stores them, without their texts (:func:`parse_file` gives them;
    :func:`count_present` reads them)."""

    def __post_init__(self) -> None:
        if self.problem_count < 0:
            self.problem_count = len(self.problems)
        if self.rater_conflict_count < 0:
            self.rater_conflict_count = len(self.rater_conflicts)

    @property
    def ok(self) -> bool:
        return not self.problem_count

    def preview(self, n: int = 10) -> list[dict]:
        """The first ``n`` comparisons as plain rows for an admin preview table; with an ``annotator`` (the
        winner's rater) when any of them names one."""
        shown = self.comparisons[:n]
        rated = any(c.annotator is not None for c in shown)
        return [{
            "line": c.line,
            "prompt": _short(_prompt_display(c.prompt)),
            "response_a": _short(c.response_a),
            "response_b": _short(c.response_b),
            "generator_a": c.generator_a,
            "generator_b": c.generator_b,
            "winner": c.winner.value if c.winner else None,
            **({"annotator": c.annotator} if rated else {}),
            "source": c.source_tag,
        } for c in shown]


def counted(n: int, one: str, many: str | None = None) -> str:
    """``n`` with the word for one or for many: '1 row', '2 rows', '100,000 rows' (thousands separated);
    counted(n, "row has", "rows have")."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


class _Problems:
    """Row problems as they are found: the first ``cap`` by line (ties in the order found), and how many were
    found in all. A problem past the first ``cap`` costs a comparison, not memory. Readers stop at ``limit``
    (:meth:`full`)."""

    __slots__ = ("cap", "limit", "count", "stopped_at", "_heap")

    def __init__(self, cap: int | None = None):
        self.cap = MAX_PROBLEMS_KEPT if cap is None else cap
        self.limit = MAX_PROBLEMS_COUNTED
        self.count = 0
        self.stopped_at: int | None = None
        """The last line read, where reading stopped at ``limit`` problems."""
        self._heap: list[tuple[int, int, str]] = []  # (-line, -order found, reason): the last kept on top

    def append(self, problem: tuple[int, str]) -> None:
        self.count += 1
        item = (-problem[0], -self.count, problem[1])
        if len(self._heap) < self.cap:
            heapq.heappush(self._heap, item)
        elif item > self._heap[0]:  # an earlier line than the last kept (lines mostly come in order: rarely)
            heapq.heapreplace(self._heap, item)

    def extend(self, problems: Iterable[tuple[int, str]], count: int | None = None) -> None:
        """Add ``problems``; ``count`` is how many they stand for when they are the listed part of more."""
        added = 0
        for problem in problems:
            self.append(problem)
            added += 1
        if count is not None:
            self.count += count - added

    def past(self, line: int) -> bool:
        """Whether a problem on ``line`` would not be kept; if so it is counted here, and the caller need not
        word its reason (some of which take longer to word than the row took to read)."""
        if len(self._heap) < self.cap or -line > self._heap[0][0]:
            return False
        self.count += 1
        return True

    def full(self, line: int) -> bool:
        """Whether reading is to stop, the file having ``limit`` problems, ``line`` being the last line read
        (then ``stopped_at``)."""
        if self.count < self.limit:
            return False
        self.stopped_at = line
        return True

    def __bool__(self) -> bool:
        return self.count > 0

    def listed(self) -> list[tuple[int, str]]:
        """The problems kept, by line."""
        return [(-line, reason) for line, _, reason in sorted(self._heap, reverse=True)]


class _Lines:
    """The lines of the rows a note is about, as :func:`_lines_note` names them: how many were added
    (``len``), how many distinct lines they are, and the first of those, not a list of them all (every line
    of a file can be one). Lines are added in the file's order."""

    __slots__ = ("count", "distinct", "first", "_last")

    def __init__(self) -> None:
        self.count = self.distinct = 0
        self.first: list[int] = []
        self._last: int | None = None

    def append(self, line: int) -> None:
        self.count += 1
        if line != self._last:
            self._last = line
            self.distinct += 1
            if len(self.first) < _NOTE_LINES:
                self.first.append(line)

    def __len__(self) -> int:
        return self.count


@functools.lru_cache(maxsize=4096)
def _close(name: str, candidates: tuple[str, ...]) -> str | None:
    """The candidate ``name`` looks like a misspelling of (difflib, ignoring case), if any.

    The cutoff is high so that a field of its own that shares a word with a known one
    ('score_chosen', 'source_id') is not taken for a misspelling of it. Cached: a file of
    rows that all fail the same way asks the same question once a row (difflib takes ~50 us).
    """
    by_lower = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(name.lower(), by_lower, n=1, cutoff=0.85)
    return by_lower[match[0]] if match else None


def _misspelt(obj: dict, missing: Iterable[str], known: Iterable[str]) -> str:
    """' (found 'winer': did you mean 'winner'?)' for fields of ``obj`` outside ``known`` that look like a
    ``missing`` one, for a problem that says a field is missing; '' when none does."""
    missing, known = tuple(missing), set(known)
    found = [(key, match) for key in obj if key not in known and (match := _close(key, missing))]
    return "".join(f" (found {_short(key, 40)!r}: did you mean {match!r}?)" for key, match in found)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _prompt_display(prompt: str | list[dict]) -> str:
    if isinstance(prompt, str):
        return prompt
    last = prompt[-1]["content"] if prompt else ""
    return f"[{len(prompt)} turns] {last}" if len(prompt) > 1 else last


@dataclass(frozen=True)
class ImportReport:
    """What an import added (and found already present)."""

    format: str
    rows: int
    prompts_added: int
    responses_added: int
    comparisons_added: int
    comparisons_existing: int
    judgments_added: int
    gold_added: int
    notes: list[str] = field(default_factory=list)
    batch_id: int | None = None

    def summary(self) -> str:
        """One human-readable paragraph for the CLI and the admin page."""
        text = (f"{self.format}: {counted(self.rows, 'row')}; added {counted(self.comparisons_added, 'comparison')} "
                f"({self.comparisons_existing:,} already present), {counted(self.prompts_added, 'prompt')}, "
                f"{counted(self.responses_added, 'response')}, {counted(self.judgments_added, 'imported judgment')}, "
                f"{counted(self.gold_added, 'gold pair')}.")
        return "\n".join([text, *self.notes])


# --------------------------------------------------------------------------- reading


_BLOCK = 2**20


class _HashingReader(io.RawIOBase):
    """Reads a binary stream, hashing what it reads and refusing more than ``max_bytes``."""

    def __init__(self, raw: BinaryIO, max_bytes: int, limit_msg: str):
        super().__init__()
        self.raw, self.max_bytes, self.limit_msg = raw, max_bytes, limit_msg
        self.hasher = hashlib.sha256()
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        if n:
            self.total += n
            if self.total > self.max_bytes:  # a file that grew since its size was checked
                raise ImportValidationError(self.limit_msg)
            self.hasher.update(memoryview(buffer)[:n])
        return n


class _Source:
    """An import file, read line by line as often as needed without holding it in memory (the bytes given,
    or a file on disk). Reading it to the end sets ``sha256``, the hash of its bytes as stored."""

    def __init__(self, source: str | Path | bytes, max_bytes: int):
        self.max_bytes = max_bytes
        self.limit_msg = (f"the file is larger than the {max_bytes / 2**20:g} MB import limit; split it or raise "
                          "PREFLOOP_MAX_UPLOAD_MB")
        self.data: bytes | None = None
        self.path: Path | None = None
        self.name: str | None = None
        self.sha256: str | None = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.data = bytes(source)
            size = len(self.data)
        else:
            path = Path(source)
            if path.is_dir():
                raise ImportValidationError(f"{path} is a folder: give the file to import")
            if not path.is_file():
                raise ImportValidationError(f"no such file: {path}")
            self.path, self.name, size = path, path.name, path.stat().st_size
        if size > max_bytes:
            raise ImportValidationError(self.limit_msg)

    def lines(self) -> Iterator[bytes]:
        """The (decompressed) file's lines, each with its b'\\n' but the last."""
        with io.BytesIO(self.data) if self.data is not None else self.path.open("rb") as raw:
            hashing = _HashingReader(raw, self.max_bytes, self.limit_msg)
            buffered = io.BufferedReader(hashing, _BLOCK)
            compressed = buffered.peek(2)[:2] == b"\x1f\x8b"
            # GzipFile.readline is Python code on every call; a BufferedReader over it reads lines in C.
            stream: BinaryIO = (io.BufferedReader(gzip.GzipFile(fileobj=buffered), 2**16) if compressed
                                else buffered)
            limit_msg = (f"the file decompresses to more than the {self.max_bytes / 2**20:g} MB import limit; "
                         "split it or raise PREFLOOP_MAX_UPLOAD_MB") if compressed else self.limit_msg
            total = 0
            try:
                while line := stream.readline(self.max_bytes + 1 - total):  # bounded: one huge line cannot blow up
                    total += len(line)
                    if total > self.max_bytes:
                        raise ImportValidationError(limit_msg)
                    yield line
                while buffered.read(_BLOCK):  # the rest (a gzip trailer) for the hash
                    pass
            except (OSError, EOFError, zlib.error) as exc:
                if not compressed:
                    raise
                raise ImportValidationError(
                    f"the file looks gzip-compressed but cannot be decompressed ({exc})") from None
            self.sha256 = hashing.hasher.hexdigest()

    def magic(self, n: int = 16) -> bytes:
        """The (decompressed) file's first ``n`` bytes; b"" where a gzip stream cannot be read."""
        with io.BytesIO(self.data) if self.data is not None else self.path.open("rb") as raw:
            head = raw.read(n)
            if head[:2] != b"\x1f\x8b":
                return head
            raw.seek(0)
            try:
                return gzip.GzipFile(fileobj=raw).read(n)
            except (OSError, EOFError, zlib.error):
                return b""  # lines() says why

    def is_blank(self) -> bool:
        """Whether the file holds nothing but whitespace (read only up to its first other byte)."""
        return not any(line.strip() for line in self.lines())


# Files that are not text, by their first bytes: named in one line rather than read as CSV
# ("line 1: unrecognised CSV columns (PAR1)").
_NOT_TEXT = (
    (rb"PAR1", "a Parquet file"),
    (rb"PK\x03\x04", "a zip archive (an Excel .xlsx workbook is one)"),
    (rb"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Office file (Excel .xls)"),
    (rb"SQLite format 3\x00", "an SQLite database"),
    (rb"ARROW1", "an Arrow file"),
    (rb"\xfd7zXZ\x00", "xz-compressed"),
    (rb"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (rb"BZh[1-9]1AY&SY", "bzip2-compressed"),
)


_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _is_text(head: bytes) -> bool:
    """No control characters, and valid UTF-8 up to a character the cut may have split."""
    if _CONTROL.search(head):
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.reason == "unexpected end of data" and exc.start >= len(head) - 3
    return True


def _check_is_text(src: _Source, name: str | None) -> None:
    """A known binary signature followed by bytes that are not text (a CSV may begin "PAR1,")."""
    head = src.magic(64)
    if _is_text(head):
        return
    for magic, what in _NOT_TEXT:
        if re.match(magic, head):
            hint = (" (pandas.read_parquet(path).to_json(out, orient='records', lines=True) converts it)"
                    if what == "a Parquet file" else "")
            raise ImportValidationError(
                f"{name or 'the file'} is {what}, not an import format: give JSON Lines, JSON or CSV, "
                f"optionally gzip-compressed (.gz){hint}; nothing was imported")


def _container(name: str | None, text_head: str) -> str:
    lowered = (name or "").lower()
    if lowered.endswith(".gz"):
        lowered = lowered[:-3]
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    first = text_head.lstrip()[:1]
    if first == "[":
        return "json"
    if first == "{":
        return "jsonl"
    if lowered.endswith(".json"):
        return "json"
    return "csv"


def _decode_lines(lines: Iterable[bytes], problems: _Problems) -> Iterator[str]:
    """Decode each line (without its newline) as UTF-8, reporting the lines that are not."""
    for number, raw in enumerate(lines, 1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append((number, f"not valid UTF-8 (byte {exc.start + 1} of the line); save the file as UTF-8"))
            yield raw.decode("utf-8", errors="replace")


class _BadJSON(ValueError):
    """JSON that Python's json reads but that cannot be stored: NaN/Infinity, or nesting too deep to read."""

    def __init__(self, msg: str):
        super().__init__(msg)
        self.msg = msg


def _reject_constant(name: str) -> float:
    raise _BadJSON(f"{name} is not a JSON number; write null or a string")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _BadJSON(f"the number {_short(text, 40)} is too large")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # a plain dict would keep the last value and silently drop the others
        seen: set[str] = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _BadJSON(f"the key {_short(repeated, 40)!r} appears more than once in one object")
    return obj


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_object)


def _loads(text: str) -> Any:
    """json.loads, strict: raises _BadJSON for NaN/Infinity/overflowing numbers and for nesting too deep."""
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise _BadJSON("nested too deeply") from None


def _jsonl_records(lines: list[str], problems: _Problems) -> Iterator[tuple[int, None, Any]]:
    for number, line in enumerate(lines, 1):
        if problems.full(number - 1):
            return
        if not line.strip():
            continue
        try:
            yield number, None, _loads(line)
        except json.JSONDecodeError as exc:
            problems.append((number, f"invalid JSON ({exc.msg} at column {exc.colno})"))
        except _BadJSON as exc:
            problems.append((number, f"invalid JSON ({exc.msg})"))


def _joined(lines: Iterable[str], chunk: int = 4096) -> str:
    """``"\\n".join(lines)`` without a list of every line, which str.join makes of an iterator: some 60 bytes
    a line more than its text, 3 GB for a 200 MB file of short lines."""
    parts, lines = [], iter(lines)
    for first in lines:
        parts.append("\n".join(itertools.chain((first,), itertools.islice(lines, chunk - 1))))
    return "\n".join(parts)


_JSON_SPACE = re.compile(r"[ \t\n\r]*")
"""What JSON reads as whitespace."""


def _json_array_records(text: str, problems: _Problems) -> Iterator[tuple[int, int | None, Any]]:
    """Elements of a top-level JSON array, each with the line it starts on and, where another element
    starts on that line too (``json.dump`` writes the whole array on one line), its 1-based place in
    the array (else None).

    The array is read one element at a time, each strictly, so NaN/Infinity are problems on the element's
    line; a syntax error or nesting too deep stops the file, wherever it is. (It was read whole first, to
    find those: every element at once, some 70 bytes for each ``{}`` of three.)
    """

    def invalid(msg: str, pos: int) -> ImportValidationError:
        exc = json.JSONDecodeError(msg, text, pos)
        return ImportValidationError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                                     [(exc.lineno, f"invalid JSON ({exc.msg})")])

    def too_deep() -> ImportValidationError:
        return ImportValidationError("invalid JSON: the file is nested too deeply to read")

    start = _JSON_SPACE.match(text).end()
    if not text.startswith("[", start):  # one value, not an object either (a file that starts with '{' is JSONL)
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise invalid(exc.msg, exc.pos) from None
        except RecursionError:
            raise too_deep() from None
        raise ImportValidationError("a .json file must hold an array of rows; use JSON Lines for one row per line")
    lenient = json.JSONDecoder()
    pos = _JSON_SPACE.match(text, start + 1).end()
    end = pos if text.startswith("]", pos) else None  # where the array ends: here when it is empty
    line, counted, previous, element = 1, 0, 0, 0
    while end is None and not problems.full(line):
        element += 1
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            try:
                item, after = _DECODER.raw_decode(text, pos)
                bad = None
            except _BadJSON as exc:
                item, bad = None, exc.msg
                _, after = lenient.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise invalid(exc.msg, exc.pos) from None
        except RecursionError:
            raise too_deep() from None
        after = _JSON_SPACE.match(text, after).end()
        if text.startswith(",", after):
            pos = _JSON_SPACE.match(text, after + 1).end()  # where the next element starts
        elif text.startswith("]", after):
            end = after
        else:
            raise invalid("Expecting ',' delimiter", after)
        shared = line == previous or (end is None and text.find("\n", counted, pos) == -1)
        previous = line
        if bad is not None:
            problems.append((line, _at_element(element if shared else None, f"invalid JSON ({bad})")))
        else:
            yield line, element if shared else None, item
    if end is not None and (rest := _JSON_SPACE.match(text, end + 1).end()) < len(text):
        raise invalid("Extra data", rest)


_ELEMENT = re.compile(r"element \d+: ")
"""How :func:`_at_element` starts a reason."""


def _at_element(element: int | None, reason: str) -> str:
    """A row problem's reason, naming the array element when several start on its line (see
    :func:`problems_message`)."""
    return reason if element is None else f"element {element}: {reason}"


def _where(line: int, element: int | None) -> str:
    """'line 3', or 'line 1, element 2' for an array element that shares its line."""
    return f"line {line}" if element is None else f"line {line}, element {element}"


_JSON_CELLS = {"responses", "comparisons", "metadata"}


_LONE_CR = re.compile(r"(?<=\r)(?!\n)")


def _csv_lines(lines: Iterable[str]) -> Iterator[str]:
    """Lines for csv.reader as a text file opened with newline='' gives them: a lone '\\r' ends a line too."""
    for line in lines:
        if "\r" in line:
            yield from _LONE_CR.split(line + "\n")
        else:
            yield line + "\n"


def _csv_records(lines: Iterable[str], problems: _Problems, fmt: str | None,
                 notes: list[str]) -> tuple[Iterator[tuple[int, None, Any]], str | None]:
    reader = csv.reader(_csv_lines(lines))
    try:
        header = next(reader)
    except StopIteration:
        raise ImportValidationError("the file is empty") from None
    except csv.Error as exc:
        raise ImportValidationError(f"line 1: unreadable CSV header ({exc})") from None
    header = [h.strip() for h in header]
    repeated = sorted({h for h in header if h and header.count(h) > 1})
    if repeated:
        # Each row becomes one object per header name: a repeated column would silently keep only its last cell.
        raise ImportValidationError(
            f"line 1: the CSV header repeats the column(s) {', '.join(repeated)}; give each column once",
            [(1, f"repeated CSV column(s) {', '.join(repeated)}")])
    own = all(k in header for k in OWN_EXPORT_MARK)
    if own:  # prefloop's own export: its ids as imported (_from_own_export)
        notes.append(OWN_EXPORT_NOTE)
        header = ["" if h in OWN_IDS or (h in OWN_EXPORT_IDS and OWN_EXPORT_IDS[h] in set(header) - set(OWN_IDS))
                  else OWN_EXPORT_IDS.get(h, h) for h in header]
    explicit = fmt is not None
    columns = set(header)
    expected = "; ".join(f"{name}: {', '.join(cols)}" for name, cols in CSV_COLUMNS.items())
    if fmt is None:
        for name in ("pairs", "kwise", "trl", "hh"):
            if set(CSV_COLUMNS[name]) <= columns and not (name == "hh" and "prompt" in columns):
                fmt = name
                break
        else:
            raise ImportValidationError(
                f"line 1: unrecognised CSV columns ({', '.join(header)}); expected one of - {expected}",
                [(1, f"wrong CSV columns; expected one of - {expected}")])
    missing = [c for c in CSV_COLUMNS[fmt] if c not in columns]
    if missing:
        raise ImportValidationError(
            f"line 1: the CSV lacks the column(s) {', '.join(missing)} needed for the {fmt} format "
            f"(expected: {', '.join(CSV_COLUMNS[fmt])})",
            [(1, f"missing CSV column(s) {', '.join(missing)}; expected {', '.join(CSV_COLUMNS[fmt])}")])
    known = ROW_FIELDS[fmt]
    ignored = [h for h in header if h and h not in known]
    if ignored:
        absent = tuple(sorted(known - columns))
        notes.append("ignored CSV column(s): " + ", ".join(
            h + (f" (did you mean {match}?)" if (match := _close(h, absent)) else "") for h in ignored))

    def records() -> Iterator[tuple[int, None, Any]]:
        last = reader.line_num
        while not problems.full(last):
            start = last + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                problems.append((start, f"unreadable CSV row ({exc})"))
                return
            last = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                if not problems.past(start):
                    problems.append((start, f"has {counted(len(row), 'cell')} but the header has {len(header)} "
                                            "columns"))
                continue
            obj: dict[str, Any] = {OWN_ROW: True} if own else {}
            bad = False
            for key, cell in zip(header, row):
                if own:
                    if cell.startswith("'") and cell[1:].startswith(CSV_GUARDED):
                        cell = cell[1:]  # the export's spreadsheet guard (CSV_GUARDED)
                    if key in ("response_a", "response_b") and cell == "":
                        obj[key] = ""  # an empty response, which a database keeps (a missing one is no cell)
                        continue
                if key not in known or cell == "":
                    continue
                if key in _JSON_CELLS or (key in ("prompt", "chosen", "rejected") and cell.lstrip().startswith("[")):
                    try:
                        value = _loads(cell)
                    except (json.JSONDecodeError, _BadJSON) as exc:
                        if key in _JSON_CELLS:
                            problems.append((start, f"column {key!r} is not valid JSON ({exc.msg})"))
                            bad = True
                            break
                        value = cell
                    if key not in _JSON_CELLS and not (isinstance(value, list) and all(
                            isinstance(m, dict) for m in value)):
                        value = cell
                    obj[key] = value
                else:
                    obj[key] = cell
            if not bad:
                yield start, None, obj

    # chosen/rejected without a prompt column may hold HH transcripts or message lists (implicit-prompt
    # TRL): let each row's content decide, as for JSON.
    return records(), (None if fmt == "hh" and not explicit else fmt)


# --------------------------------------------------------------------------- row parsing


class _RowError(Exception):
    pass


def _detect_row(obj: dict) -> str | None:
    if "responses" in obj:
        return "kwise"
    if "response_a" in obj or "response_b" in obj:
        return "pairs"
    if "chosen" in obj or "rejected" in obj:
        if "prompt" in obj:
            return "trl"
        if isinstance(obj.get("chosen"), str) and isinstance(obj.get("rejected"), str):
            return "hh"
        return "trl"
    return None


def _opt_str(obj: dict, key: str, limit: int, what: str | None = None) -> str | None:
    """``obj[key]`` as a string (a number as its digits), None when absent or empty; ``what`` names it in
    problems (``repr(key)`` by default)."""
    what = what or repr(key)
    value = obj.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _RowError(f"{what} must be a string")
    value = str(value)
    if len(value) > limit:
        raise _RowError(f"{what} is longer than {limit} characters")
    _refuse_nul(value, what)
    return value


def _refuse_nul(value: str, what: str) -> None:
    """A NUL character is refused where it is read, on every backend: SQLite stores it but PostgreSQL's text
    (and the text of a JSON value) cannot hold it, so the same file would import on one and fail on the other."""
    if "\x00" in value:
        raise _RowError(f"{what} contains a NUL character (\\u0000) at character {value.index(chr(0)) + 1:,}, "
                        "which PostgreSQL cannot store; remove it")


def _opt_dict(obj: dict, key: str) -> dict | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _RowError(f"{key!r} must be a JSON object")
    stack = [(value, 1)]  # iterative: a recursive walk would hit the recursion limit it guards against
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _RowError(f"{key!r} is nested more than {MAX_JSON_DEPTH} levels deep")
        children = node.values() if isinstance(node, dict) else node
        for text in itertools.chain(node if isinstance(node, dict) else (), children):  # keys and values
            if isinstance(text, str):
                _refuse_nul(text, f"a string in {key!r}")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return value


def _rater(obj: dict, what: str | None = None) -> str | None:
    """The ``annotator`` who gave a row's known winner, without surrounding spaces ("  r3 " is r3), or None."""
    rater = _opt_str(obj, "annotator", MAX_ID_CHARS, what)
    return rater.strip() or None if rater is not None else None


def _tag(obj: dict) -> str | None:
    tag = _opt_str(obj, "source", MAX_TAG_CHARS)
    return tag if tag is not None else _opt_str(obj, "tag", MAX_TAG_CHARS)


def _text(value: Any, what: str, max_chars: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _RowError(f"{what} must be a string, not {_json_type(value)}")
    _refuse_nul(value, what)
    if not allow_empty and not value.strip():
        raise _RowError(f"{what} is empty")
    if len(value) > max_chars:
        raise _RowError(f"{what} is longer than the {max_chars:,}-character limit ({len(value):,} characters; "
                        "PREFLOOP_MAX_TEXT_CHARS)")
    return value


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _messages(value: Any, what: str, max_chars: int, *, allow_empty: bool = False) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _RowError(f"{what} must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise _RowError(f"{what}[{i}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise _RowError(f"{what}[{i}] has role {role!r}; roles are {', '.join(ROLES)}"
                            + ("" if "role" in m else _misspelt(m, ["role"], MESSAGE_FIELDS)))
        content = m.get("content")
        if not isinstance(content, str):
            raise _RowError(f"{what}[{i}].content must be a string, not {_json_type(content)}"
                            + ("" if "content" in m else _misspelt(m, ["content"], MESSAGE_FIELDS)))
        _refuse_nul(content, f"{what}[{i}].content")
        out.append({"role": role, "content": content})
    total = sum(len(m["content"]) for m in out)
    if not allow_empty and not any(m["content"].strip() for m in out):
        raise _RowError(f"{what} is empty")
    if total > max_chars:
        raise _RowError(f"{what} is longer than the {max_chars:,}-character limit ({total:,} characters; "
                        "PREFLOOP_MAX_TEXT_CHARS)")
    return out


def _dropped_message_keys(row: dict) -> set[str]:
    """Message fields (``name``, ``tool_calls`` ...) that :func:`_messages` leaves out, in a row's message lists."""
    keys: set[str] = set()
    for field in ("prompt", "chosen", "rejected"):
        value = row.get(field)
        if isinstance(value, list):
            for message in value:
                if isinstance(message, dict):
                    keys.update(str(k) for k in message if k not in MESSAGE_FIELDS)
    return keys


def _prompt(value: Any, max_chars: int) -> str | list[dict]:
    if isinstance(value, list):
        return _messages(value, "prompt", max_chars)
    if value is None:
        raise _RowError("missing field 'prompt'")
    return _text(value, "prompt", max_chars)


def render_messages(messages: list[dict]) -> str:
    """Render response message(s) as one text: a leading assistant turn plain, later turns labelled.

    This is what annotators see and the reward model scores for a response given as several
    messages; the messages themselves are kept under ``RESPONSE_MESSAGES`` in the response's
    metadata, and conversational exports give them back with their roles when they still render
    to the response's text.
    """
    parts = []
    for i, m in enumerate(messages):
        if i == 0 and m["role"] == "assistant":
            parts.append(m["content"])
        else:
            parts.append(f"\n\n{_TEXT_LABEL[m['role']]}: {m['content']}")
    return "".join(parts)


def _response(messages: list[dict]) -> tuple[str, dict | None]:
    """A response given as messages: its text, and the metadata keeping the messages unless they are one
    assistant turn (the usual case, stored as plain text)."""
    if len(messages) == 1 and messages[0]["role"] == "assistant":
        return messages[0]["content"], None
    return render_messages(messages), {RESPONSE_MESSAGES: messages}


def _winner(value: Any, what: str = "winner") -> Choice | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lower() in WINNERS:
        return WINNERS[value.strip().lower()]
    raise _RowError(f"unknown {what} {value!r}; use one of {', '.join(WINNERS)}")


def _require(obj: dict, *keys: str) -> None:
    missing = [k for k in keys if obj.get(k) is None]
    if missing:
        raise _RowError(f"missing {'field' if len(missing) == 1 else 'fields'} {', '.join(repr(k) for k in missing)}"
                        + _misspelt(obj, missing, ALL_ROW_FIELDS))


OWN_EXPORT_NOTE = ("read as a prefloop export (it has prompt_external_id and comparison_id): its prompt_id, "
                   "comparison_id, judgment_id, response ids and source are the exporting database's and were not "
                   "read; prompt_external_id, external_id, the *_external_id columns and source_tag were read as "
                   "prompt_id, id, the response ids and tag")


def _from_own_export(obj: dict) -> dict:
    """A row of prefloop's own preference or raw judgment export, read back as the ids it was imported with.

    Such a row's ``prompt_id`` (and ``comparison_id``, ``response_a_id``, ...) are the exporting database's row
    ids, which the pairs and TRL formats would read as your prompt id: an export imported elsewhere came back
    with prompt ids "1", "2", ... and without its ids and tag. Its ``prompt_external_id``, ``external_id``,
    ``*_external_id`` and ``source_tag`` are what the first import was given: they are read as ``prompt_id``,
    ``id``, the response ids and ``tag`` (``""``, as JSON Lines exports write a missing one, is none; a
    ``tag`` column added to the file wins), a row marked ``is_tie`` / ``is_both_bad`` keeps that
    outcome (:data:`OWN_WINNER`), a prompt written as the JSON text of its messages is that chat, and an
    empty response is one (:data:`OWN_ROW`). Rows without both :data:`OWN_EXPORT_MARK` columns are returned as they are."""
    if not all(k in obj for k in OWN_EXPORT_MARK):
        return obj
    out = {k: v for k, v in obj.items() if k not in OWN_IDS and k not in OWN_EXPORT_IDS
           and k not in OWN_OUTCOMES}
    out[OWN_ROW] = True
    # The raw judgment export writes a chat prompt as the JSON text of its messages (one column type for
    # `datasets`), as CSV cells hold them: read back as that chat, not as a text prompt of JSON.
    if isinstance(prompt := obj.get("prompt"), str) and prompt.lstrip().startswith("["):
        try:
            messages = _loads(prompt)
        except (json.JSONDecodeError, _BadJSON):
            messages = None
        if isinstance(messages, list) and messages and all(
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages):
            out["prompt"] = messages  # else a text prompt that starts with "[" (JSON that is no chat), kept as text
    for column, field in OWN_EXPORT_IDS.items():
        if column in obj and (field not in obj or field in OWN_IDS):  # the exporting database's id: replaced
            out[field] = obj[column]
    # A preference export written with ties (or both-bad majorities) included marks those rows: their
    # chosen/rejected are only A and B, and read as "chosen wins" they would be votes nobody gave.
    for column, winner in OWN_OUTCOMES.items():
        if obj.get(column) is True:
            out[OWN_WINNER] = winner
    return out


def _parse_pairs(line: int, obj: dict, max_chars: int) -> list[ParsedComparison]:
    _require(obj, "prompt", "response_a", "response_b")
    prompt = _prompt(obj["prompt"], max_chars)
    own = obj.get(OWN_ROW) is True
    a = _text(obj["response_a"], "response_a", max_chars, allow_empty=own)
    b = _text(obj["response_b"], "response_b", max_chars, allow_empty=own)
    if a == b:
        raise _RowError("response_a and response_b are identical")
    return [ParsedComparison(
        line=line, prompt=prompt, response_a=a, response_b=b, winner=_winner(obj.get("winner")),
        annotator=_rater(obj),
        prompt_id=_opt_str(obj, "prompt_id", MAX_ID_CHARS), row_id=_opt_str(obj, "id", MAX_ID_CHARS),
        response_a_id=_opt_str(obj, "response_a_id", MAX_ID_CHARS),
        response_b_id=_opt_str(obj, "response_b_id", MAX_ID_CHARS),
        generator_a=_opt_str(obj, "generator_a", MAX_ID_CHARS),
        generator_b=_opt_str(obj, "generator_b", MAX_ID_CHARS),
        metadata=_opt_dict(obj, "metadata"), source_tag=_tag(obj))]


def _parse_kwise(line: int, obj: dict, max_chars: int) -> list[ParsedComparison]:
    _require(obj, "prompt", "responses")
    prompt = _prompt(obj["prompt"], max_chars)
    items = obj["responses"]
    if not isinstance(items, list) or len(items) < 2:
        raise _RowError("'responses' must be a list of at least 2 responses")
    if len(items) > MAX_KWISE_RESPONSES:  # before any pair is built: k responses give k(k-1)/2 comparisons
        raise _RowError(f"'responses' has {len(items):,} responses; a k-wise row may have at most "
                        f"{MAX_KWISE_RESPONSES} ({MAX_KWISE_RESPONSES * (MAX_KWISE_RESPONSES - 1) // 2} "
                        "comparisons); split them over several rows with the same prompt")
    texts, gens, ids, metas = [], [], [], []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            if "text" not in item:
                raise _RowError(f"responses[{i}] needs a 'text' field" + _misspelt(item, ["text"], RESPONSE_FIELDS))
            texts.append(_text(item["text"], f"responses[{i}].text", max_chars))
            gens.append(_opt_str(item, "generator", MAX_ID_CHARS))
            ids.append(_opt_str(item, "id", MAX_ID_CHARS))
            metas.append(_opt_dict(item, "metadata"))
        else:
            texts.append(_text(item, f"responses[{i}]", max_chars))
            gens.append(None), ids.append(None), metas.append(None)
    seen: dict[str, int] = {}
    for i, t in enumerate(texts):
        if t in seen:
            raise _RowError(f"responses[{seen[t]}] and responses[{i}] are identical")
        seen[t] = i
    # (i, j) -> {rater (None for an outcome naming none): outcome}: one outcome per rater and pair
    outcomes: dict[tuple[int, int], dict[str | None, Choice]] = {}
    row_rater = _rater(obj)
    raw_outcomes = obj.get("comparisons") or []
    if not isinstance(raw_outcomes, list):
        raise _RowError("'comparisons' must be a list of {\"a\": i, \"b\": j, \"winner\": ...}")
    k = len(texts)
    for n, oc in enumerate(raw_outcomes):
        if not isinstance(oc, dict):
            raise _RowError(f"comparisons[{n}] must be an object with 'a', 'b' and 'winner'")
        i, j = oc.get("a"), oc.get("b")
        for name, idx in (("a", i), ("b", j)):
            if isinstance(idx, bool) or not isinstance(idx, int):
                raise _RowError(f"comparisons[{n}].{name} must be a response index (0 to {k - 1})")
            if not 0 <= idx < k:
                raise _RowError(f"comparisons[{n}].{name} = {idx} is out of range (0 to {k - 1})")
        if i == j:
            raise _RowError(f"comparisons[{n}] compares response {i} with itself")
        choice = _winner(oc.get("winner"), f"comparisons[{n}].winner")
        if choice is None:
            raise _RowError(f"comparisons[{n}] has no winner"
                            + ("" if "winner" in oc else _misspelt(oc, ["winner"], OUTCOME_FIELDS)))
        rater = _rater(oc, f"comparisons[{n}].annotator") or row_rater
        key, canon = ((i, j), choice) if i < j else ((j, i), _flip(choice))
        given = outcomes.setdefault(key, {})
        if given.get(rater, canon) is not canon:
            by = "" if rater is None else f" by annotator {_short(rater, 40)!r}"
            raise _RowError(f"comparisons[{n}] contradicts an earlier outcome{by} for responses {key[0]} and {key[1]}")
        given[rater] = canon
    prompt_id, row_id = _opt_str(obj, "prompt_id", MAX_ID_CHARS), _opt_str(obj, "id", MAX_ID_CHARS)
    meta, tag = _opt_dict(obj, "metadata"), _tag(obj)
    p_hash = prompt_hash(prompt)
    hashes = [content_hash(t) for t in texts]
    # A pair that several raters judged is given once for each of them.
    return [ParsedComparison(
        line=line, prompt=prompt, response_a=texts[i], response_b=texts[j], winner=winner, annotator=rater,
        prompt_id=prompt_id, row_id=row_id, response_a_id=ids[i], response_b_id=ids[j],
        generator_a=gens[i], generator_b=gens[j], response_a_meta=metas[i], response_b_meta=metas[j],
        metadata=meta, source_tag=tag, prompt_hash=p_hash, hash_a=hashes[i], hash_b=hashes[j])
        for i in range(k) for j in range(i + 1, k)
        for rater, winner in (outcomes.get((i, j)) or {None: None}).items()]


def _by_hash(line: int, prompt, chosen: str, rejected: str, *, chosen_meta: dict | None = None,
             rejected_meta: dict | None = None, chosen_id: str | None = None, rejected_id: str | None = None,
             **extra) -> ParsedComparison:
    hc, hr = content_hash(chosen), content_hash(rejected)
    if hc < hr:
        return ParsedComparison(line=line, prompt=prompt, response_a=chosen, response_b=rejected,
                                winner=Choice.a, hash_a=hc, hash_b=hr, response_a_meta=chosen_meta,
                                response_b_meta=rejected_meta, response_a_id=chosen_id, response_b_id=rejected_id,
                                **extra)
    return ParsedComparison(line=line, prompt=prompt, response_a=rejected, response_b=chosen,
                            winner=Choice.b, hash_a=hr, hash_b=hc, response_a_meta=rejected_meta,
                            response_b_meta=chosen_meta, response_a_id=rejected_id, response_b_id=chosen_id, **extra)


def _parse_trl(line: int, obj: dict, max_chars: int) -> tuple[list[ParsedComparison], bool, bool]:
    """Returns the comparison, whether a response is more than one assistant message, and whether one is empty.

    An empty response ("", or messages with empty content) is kept, as HH's are: a model that said nothing
    is data, and a preference export of such a pair (``"chosen": ""``) must import back."""
    _require(obj, "chosen", "rejected")
    chosen, rejected = obj["chosen"], obj["rejected"]
    chosen_meta = rejected_meta = None
    if isinstance(chosen, list) != isinstance(rejected, list):
        raise _RowError("'chosen' and 'rejected' must both be text or both be message lists")
    if "prompt" in obj and obj["prompt"] is not None:
        prompt = _prompt(obj["prompt"], max_chars)
        if isinstance(chosen, list):
            chosen, chosen_meta = _response(_messages(chosen, "chosen", max_chars, allow_empty=True))
            rejected, rejected_meta = _response(_messages(rejected, "rejected", max_chars, allow_empty=True))
    else:
        if not isinstance(chosen, list):
            raise _RowError("without a 'prompt', 'chosen' and 'rejected' must be message lists "
                            "(or HH transcripts starting with '\\n\\nHuman:')")
        c = _messages(chosen, "chosen", 2 ** 62, allow_empty=True)
        r = _messages(rejected, "rejected", 2 ** 62, allow_empty=True)
        n = 0
        while n < min(len(c), len(r)) and c[n] == r[n]:
            n += 1
        if n == 0:
            raise _RowError("'chosen' and 'rejected' share no leading messages, so there is no implicit prompt; "
                            "add a 'prompt' field")
        if n == len(c) or n == len(r):
            raise _RowError("one of 'chosen'/'rejected' has nothing after the shared prompt")
        prompt = _messages(c[:n], "prompt", max_chars)
        (chosen, chosen_meta), (rejected, rejected_meta) = _response(c[n:]), _response(r[n:])
    chosen = _text(chosen, "chosen", max_chars, allow_empty=True)
    rejected = _text(rejected, "rejected", max_chars, allow_empty=True)
    if chosen == rejected:
        raise _RowError("'chosen' and 'rejected' are identical")
    return [_by_hash(line, prompt, chosen, rejected, chosen_meta=chosen_meta, rejected_meta=rejected_meta,
                     chosen_id=_opt_str(obj, "chosen_id", MAX_ID_CHARS),
                     rejected_id=_opt_str(obj, "rejected_id", MAX_ID_CHARS),
                     prompt_id=_opt_str(obj, "prompt_id", MAX_ID_CHARS), row_id=_opt_str(obj, "id", MAX_ID_CHARS),
                     metadata=_opt_dict(obj, "metadata"), source_tag=_tag(obj),
                     annotator=_rater(obj))], \
        chosen_meta is not None or rejected_meta is not None, not chosen.strip() or not rejected.strip()


def _common_prefix_len(a: str, b: str) -> int:
    # Binary search on slice equality: C-speed compares instead of a Python loop per character.
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _hh_messages(transcript: str) -> list[dict]:
    parts = _HH_TURN.split(transcript)
    if parts[0].strip():
        raise _RowError("an HH transcript must start with '\\n\\nHuman:'")
    return [{"role": _HH_ROLE[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def _parse_hh(line: int, obj: dict, max_chars: int) -> tuple[list[ParsedComparison], bool, bool]:
    """Returns the comparison, whether the row diverged before its final turn, and whether a response is empty."""
    _require(obj, "chosen", "rejected")
    chosen, rejected = obj["chosen"], obj["rejected"]
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise _RowError(f"{name!r} must be a transcript string, not {_json_type(value)}")
    if chosen == rejected:
        raise _RowError("'chosen' and 'rejected' are identical")
    n = _common_prefix_len(chosen, rejected)
    split = chosen.rfind(HH_ASSISTANT, 0, n)
    if split < 0:
        raise _RowError("no shared '\\n\\nAssistant:' turn before chosen and rejected differ")
    messages = _hh_messages(chosen[:split])
    if not messages:
        raise _RowError("the shared conversation has no Human turn")
    prompt = _messages(messages, "prompt", max_chars)
    start = split + len(HH_ASSISTANT)
    # The real data has empty final assistant turns ("said nothing"); they are kept as empty responses.
    c = _text(chosen[start:].strip(), "chosen response", max_chars, allow_empty=True)
    r = _text(rejected[start:].strip(), "rejected response", max_chars, allow_empty=True)
    if c == r:
        raise _RowError("chosen and rejected responses are identical apart from surrounding whitespace")
    diverged = bool(_HH_TURN.search(chosen, start) or _HH_TURN.search(rejected, start))
    return [_by_hash(line, prompt, c, r, row_id=_opt_str(obj, "id", MAX_ID_CHARS), source_tag=_tag(obj),
                     annotator=_rater(obj))], \
        diverged, not c or not r


_NOTE_LINES = 10
"""The lines a note names (:func:`_lines_note`)."""


def _lines_note(lines: _Lines) -> str:
    """'line 3' or 'lines 1, 2, ... (5 more)', each line once (the elements of a one-line JSON array share it)."""
    shown = ", ".join(str(x) for x in lines.first)
    return ("line " if lines.distinct == 1 else "lines ") + shown + (
        f", ... ({lines.distinct - len(lines.first):,} more)" if lines.distinct > len(lines.first) else "")


def _conflicts_note(conflicts: list[_Conflict], known_winner: str | None, limit: int = 5) -> str:
    """The note for comparisons that rows give different known winners: where, and what the import does
    with them (``known_winner`` as :func:`prepare_import` takes it; None for a preview, before it is chosen).

    Both answers are kept, as the file gives them: a file may hold several people's labels, and picking
    one would hide that they disagree. Rows that name different raters are a vote each; rows that name
    none count once per answer, so such a pair has no majority (see the README's aggregation rule).
    """
    n = len({c.pair for c in conflicts})
    one = n == 1
    places = list(dict.fromkeys(c.where if c.where == c.first else f"{c.where} against {c.first}"
                                for c in conflicts))  # k-wise rows: once
    shown = "; ".join(places[:limit]) + (f"; ... ({len(places) - limit:,} more)" if len(places) > limit else "")
    head = (f"{counted(n, 'comparison is', 'comparisons are')} given different known winners by "
            f"different rows ({shown}): ")
    if known_winner == "ignore":
        return head + f"known winners are ignored, so {'it is' if one else 'they are'} imported without one"
    separate = {c.separate for c in conflicts}
    if separate == {True}:
        kept = ("the rows name different raters ('annotator'), so each is a vote of its own and preference "
                "exports take the majority (leaving out a pair without one until more votes settle it)")
    elif separate == {False}:
        kept = (f"each answer becomes one imported judgment, however many rows give it, so "
                f"{'the pair has' if one else 'these pairs have'} no majority and preference exports leave "
                f"{'it' if one else 'them'} out until more votes settle {'it' if one else 'them'}; rows that "
                "name different raters ('annotator') would be separate votes")
    else:
        kept = ("rows that name different raters ('annotator') are separate votes, and of rows that name none "
                "each answer becomes one imported judgment, however many rows give it; preference exports "
                "leave out a pair without a majority until more votes settle it")
    if known_winner is None:
        kept += "; as gold pairs the file is refused (a gold pair needs one answer)"
    return head + kept


def _raters_note(rated: int, raters: int, known_winner: str | None) -> str | None:
    """How many raters the file's known winners name (None when none does, or known winners are ignored)."""
    if not rated or known_winner == "ignore":
        return None
    head = (f"{counted(rated, 'known winner comes', 'known winners come')} from "
            f"{counted(raters, 'rater')} ('annotator'): ")
    if known_winner == "gold":
        return head + "a gold pair has one answer, whoever gave it, so the raters are not stored"
    text = head + "each rater's answer to a pair is a vote of its own, one imported judgment"
    if known_winner is None:  # the preview's note: the import's options are not chosen yet
        text += " (with known winners ignored or made gold answers, the raters are not stored)"
    return text


class _IgnoredFields:
    """Fields of a row that its format does not read, gathered over the file for one note (not one per row).

    Covers the row's own fields and those of a k-wise row's response and outcome objects; a chat
    message's other fields have their own note (see :func:`_dropped_message_keys`). In CSV, columns
    no format reads are never read into rows: the header note names them. One instance reads one
    file, whose rows share one format.
    """

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        """Field as shown (``responses[].model`` for a nested one) -> rows giving it, in order of first appearance."""
        self.meant: dict[str, tuple[str, set[str]]] = {}
        """Field as shown -> (its name, the known fields missing beside it in some row): what a misspelling meant."""
        self.lines = _Lines()
        self._shapes: dict[tuple, list[str]] = {}
        """(prefix, an object's keys) -> its fields as shown: a file's rows have few shapes, each worked out once."""

    def add(self, line: int, fmt: str, obj: dict) -> None:
        parts = [self._scan("", obj, ROW_FIELDS[fmt])]
        if fmt == "kwise":
            parts.extend(self._scan(f"{name}[].", item, known)
                         for name, known in (("responses", RESPONSE_FIELDS), ("comparisons", OUTCOME_FIELDS))
                         for item in obj.get(name) or () if isinstance(item, dict))
        if any(parts):
            self.lines.append(line)
            for shown in {shown: None for part in parts for shown in part}:  # once a row, however many responses
                self.rows[shown] = self.rows.get(shown, 0) + 1

    def _scan(self, prefix: str, obj: dict, known: Collection[str]) -> list[str]:
        shape = (prefix, *obj)
        unknown = self._shapes.get(shape)
        if unknown is None:
            absent = set(known) - obj.keys()
            unknown = self._shapes[shape] = [prefix + key for key in obj if key not in known]
            for shown in unknown:
                self.meant.setdefault(shown, (shown[len(prefix):], set()))[1].update(absent)
        return unknown

    def note(self, limit: int = 10) -> str | None:
        if not len(self.lines):
            return None
        fields = sorted(self.rows, key=lambda k: -self.rows[k])  # stable: ties keep their first appearance
        described = []
        for shown in fields[:limit]:
            name, absent = self.meant[shown]
            match = _close(name, tuple(sorted(absent)))
            described.append(f"{_short(shown, 40)!r} ({counted(self.rows[shown], 'row')}"
                             + (f"; did you mean {match!r}?)" if match else ")"))
        if len(fields) > limit:
            described.append(f"... ({len(fields) - limit} more)")
        return (f"ignored field(s) in {counted(len(self.lines), 'row')} ({_lines_note(self.lines)}): "
                + ", ".join(described))


def _normalise_fmt(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    name = fmt.strip().lower().replace("-", "")
    if name not in FORMATS:
        raise ImportValidationError(f"unknown format {fmt!r}; accepted formats: {FORMAT_HELP}")
    return name


def _parse_data(src: _Source, name: str | None, fmt: str | None, max_text_chars: int,
                keep: Callable[[ParsedComparison], None] | None = None, *, with_keys: bool = False) -> ParsedFile:
    """Read and check every row of ``src``. Each comparison is passed to ``keep`` as it is read (with the prompt
    hash it is stored under: :class:`_PromptForms`), and the result's ``comparisons`` stays empty; without
    ``keep`` they are gathered there. ``with_keys`` fills ``pair_keys``. The notes on ``conflicts``
    and raters, and the problems in ``rater_conflicts``, are the caller's: what they come to depends on the
    import's handling of known winners."""
    fmt = _normalise_fmt(fmt)
    if src.is_blank():
        raise ImportValidationError("the file is empty")
    _check_is_text(src, name)
    problems = _Problems()  # the first MAX_PROBLEMS_KEPT and a count: a file can have one on every line
    notes: list[str] = []
    lines = _decode_lines(src.lines(), problems)
    head = list(itertools.islice(lines, 5))
    container = _container(name, "\n".join(head)[:1000])
    lines = itertools.chain(head, lines)
    if container == "csv":
        records, fmt = _csv_records(lines, problems, fmt, notes)
    elif container == "json":
        records = _json_array_records(_joined(lines), problems)
    else:
        records = _jsonl_records(lines, problems)

    comparisons: list[ParsedComparison] = []
    if keep is None:
        keep = comparisons.append
    # pair key -> (vote, winner, line, element) of the row that gave it, or {vote: (winner, line, element)}
    # once rows repeat it (most pairs are given once: a tuple, not a dict, for each). A row's vote is
    # (rater, None) when it names the rater of its winner, else (None, winner): one per rater, or one
    # per answer for rows that name none.
    seen: dict[tuple[str, str, str], tuple | dict] = {}
    # A prompt given as text and as a chat of that one user turn is one prompt (as it is stored): its pairs
    # are counted, checked and kept once, under the hash of the form given first.
    forms = _PromptForms()
    # Rows a note is about, and rows that are problems, are counted and the first kept, not listed: a file
    # repeating one row (gzip makes a 200 MB one a 200 KB upload) adds one to these on every line.
    duplicates = _Lines()
    conflicts: list[_Conflict] = []
    raters: set[str] = set()
    rated = 0
    diverged = _Lines()
    own_export = _Lines()
    empty = _Lines()
    multi_message = _Lines()
    dropped_lines = _Lines()
    dropped_keys: set[str] = set()
    rater_conflicts = _Problems()
    rater_line: tuple[int, int | None] | None = None  # the last row in rater_conflicts (a k-wise row: once)
    ignored = _IgnoredFields()
    rows = 0
    given = 0
    over_limit: tuple[int, int | None] | None = None
    file_fmt = fmt
    for line, element, obj in records:
        rows += 1
        if not isinstance(obj, dict):
            if not problems.past(line):
                problems.append((line, _at_element(element, f"a row must be a JSON object, not {_json_type(obj)}")))
            continue
        if (own := _from_own_export(obj)) is not obj:
            obj = own
            own_export.append(line)
        row_fmt = _detect_row(obj)
        if file_fmt is None:
            if row_fmt is None:
                if problems.past(line):
                    continue
                meant = dict.fromkeys(m for key in obj if (m := _close(key, ALL_ROW_FIELDS)) and m not in obj)
                hint = f"; did you mean {', '.join(map(repr, meant))}?" if meant else ""
                reason = (f"unrecognised row (fields: {', '.join(sorted(obj)) or 'none'}{hint}); "
                          f"accepted formats: {FORMAT_HELP}")
                problems.append((line, _at_element(element, reason)))
                continue
            file_fmt = row_fmt
        elif fmt is None and row_fmt is not None and row_fmt != file_fmt:
            reason = (f"row looks like {row_fmt or 'no known format'} but earlier rows are {file_fmt}; "
                      "one file must use one format")
            problems.append((line, _at_element(element, reason)))
            continue
        try:
            if file_fmt == "pairs":
                parsed = _parse_pairs(line, obj, max_text_chars)
            elif file_fmt == "kwise":
                parsed = _parse_kwise(line, obj, max_text_chars)
            elif file_fmt == "trl":
                parsed, several, has_empty = _parse_trl(line, obj, max_text_chars)
                if several:
                    multi_message.append(line)
                if has_empty:
                    empty.append(line)
            else:
                parsed, div, has_empty = _parse_hh(line, obj, max_text_chars)
                if div:
                    diverged.append(line)
                if has_empty:
                    empty.append(line)
        except _RowError as exc:
            problems.append((line, _at_element(element, str(exc))))
            continue
        if (own_winner := obj.get(OWN_WINNER)) is not None:
            parsed = [replace(c, winner=own_winner) for c in parsed]
        if extra := _dropped_message_keys(obj):
            dropped_lines.append(line)
            dropped_keys |= extra
        ignored.add(line, file_fmt, {k: v for k, v in obj.items() if k not in OWN_KEYS})
        given += len(parsed)
        if given > MAX_FILE_COMPARISONS and over_limit is None:
            over_limit = (line, element)
        if over_limit is None:  # past the limit, later rows are still checked but not kept
            for c in parsed:
                if (h := forms.stored_as(c)) != c.prompt_hash:
                    c = replace(c, prompt_hash=h)  # the prompt in its other form earlier in this file: one prompt
                key = c.pair_key
                winner = c.winner if c.hash_a == key[1] else _flip(c.winner)
                rater = c.annotator if winner is not None else None
                vote = (rater, None) if rater is not None else (None, winner)
                if rater is not None:
                    rated += 1
                    raters.add(rater)
                earlier = seen.get(key)
                if earlier is None:
                    seen[key] = (vote, winner, line, element)
                else:
                    if isinstance(earlier, tuple):
                        earlier = seen[key] = {earlier[0]: earlier[1:]}
                    prior = earlier.get(vote)
                    if prior is not None and prior[0] == winner:
                        duplicates.append(line)
                    elif prior is not None:
                        # Which of one rater's two answers is final cannot be told (a later import can
                        # change it): a problem, once a row.
                        if (line, element) != rater_line:
                            rater_line = (line, element)
                            pair = "this pair" if file_fmt != "kwise" else "a pair of this row"
                            rater_conflicts.append((line, _at_element(element, (
                                f"annotator {_short(rater, 40)!r} gives {pair} another winner than on "
                                f"{_where(*prior[1:])}; a rater has one answer per pair: keep the row with the "
                                "final one (importing another answer later replaces theirs)"))))
                    else:
                        # A row with no winner adds nothing to disagree with, nor does one repeating an answer
                        # already given; otherwise name the first row that gave this pair another winner.
                        if winner is not None and all(w != winner for w, *_ in earlier.values()):
                            first = next(((v, at) for v, at in earlier.items() if at[0] is not None), None)
                            if first is not None:
                                conflicts.append(_Conflict(_where(line, element), _where(*first[1][1:]),
                                                           rater is not None and first[0][0] is not None, key))
                        earlier[vote] = (winner, line, element)
                keep(c)

    if over_limit is not None:
        reason = (f"the file gives {given:,} comparisons, more than the {MAX_FILE_COMPARISONS:,} one import may "
                  "add, and this row passes that limit; split the file and import the parts one after another")
        problems.append((over_limit[0], _at_element(over_limit[1], reason)))
    if rows == 0 and not problems:
        raise ImportValidationError("the file has no data rows")
    if file_fmt is None:
        stopped = (f" (reading stopped at line {problems.stopped_at:,}, after {counted(problems.count, 'problem')})"
                   if problems.stopped_at is not None else "")
        raise ImportValidationError(f"could not detect the file's format{stopped}; accepted formats: {FORMAT_HELP}",
                                    problems.listed(), count=problems.count)
    if diverged:
        notes.append(f"{counted(len(diverged), 'HH row has', 'HH rows have')} more 'Human:'/'Assistant:' turns after "
                     f"the last assistant turn that chosen and rejected share ({_lines_note(diverged)}): split there; "
                     "the later turns are kept as written in that side's response text (one assistant message in "
                     "exports)")
    if multi_message:
        notes.append(f"{counted(len(multi_message), 'row has', 'rows have')} a response of several messages, or of "
                     f"one that is not the assistant's ({_lines_note(multi_message)}): annotators see it as one text "
                     "with later turns labelled 'Human:'/'Assistant:', and conversational exports give back its "
                     "messages with their roles")
    if own_export:
        notes.append(f"{OWN_EXPORT_NOTE} ({counted(len(own_export), 'row')}: {_lines_note(own_export)})")
    if empty:
        notes.append(f"{counted(len(empty), f'{file_fmt.upper()} row has', f'{file_fmt.upper()} rows have')} an "
                     f"empty response ({_lines_note(empty)}): kept as empty text")
    if dropped_lines:
        shown = sorted(dropped_keys)
        keys = ", ".join(repr(k) for k in shown[:10]) + (", ..." if len(shown) > 10 else "")
        notes.append(f"{counted(len(dropped_lines), 'row has', 'rows have')} messages with fields other than 'role' "
                     f"and 'content' ({keys}; {_lines_note(dropped_lines)}): only role and content were imported")
    if note := ignored.note():
        notes.append(note)
    if duplicates:
        notes.append(f"{counted(len(duplicates), 'duplicate comparison')} ({_lines_note(duplicates)}) "
                     + ("repeats an earlier row and is" if len(duplicates) == 1 else "repeat earlier rows and are")
                     + " imported once")
    votes: Counter = Counter()
    for given in seen.values():
        answers = ([given[1]] if isinstance(given, tuple) else [at[0] for at in given.values()])
        answers = [w for w in answers if w is not None]
        if answers:
            votes[(len(answers), _settled(answers))] += 1
    return ParsedFile(format=file_fmt, comparisons=comparisons, problems=problems.listed(), notes=notes, rows=rows,
                      comparison_count=len(seen), known_count=sum(votes.values()), votes=dict(votes),
                      conflicts=conflicts, rater_conflicts=rater_conflicts.listed(), rated_count=rated,
                      raters=len(raters), problem_count=problems.count,
                      rater_conflict_count=rater_conflicts.count, stopped_at=problems.stopped_at,
                      other_forms=forms.other, pair_keys=PairKeys({_Key(*k) for k in seen}, forms.other) if with_keys else None)


def parse_file(path_or_bytes: str | Path | bytes, *, filename: str | None = None, fmt: str | None = None,
               max_text_chars: int = 50_000, max_bytes: int = 200 * 2**20,
               keep_first: int | None = None) -> ParsedFile:
    """Pure: reads and validates, touches no database. Detects the format when fmt is None.

    Row problems (with 1-based line numbers; the reason starts 'element N: ' for an element of a JSON array
    that shares its line with others) are collected in ``problems``, the first :data:`MAX_PROBLEMS_KEPT` by
    line, and counted in ``problem_count`` (every line of a file can be one; reading stops at
    :data:`MAX_PROBLEMS_COUNTED`, ``stopped_at``);
    file-level problems (too large, empty, unknown format, wrong CSV columns)
    raise :class:`ImportValidationError`. With ``keep_first``, only that many comparisons are kept (for a
    preview; ``comparison_count`` and ``known_count`` still count them all): the texts of every comparison
    take several times the file's size.
    """
    src = _Source(path_or_bytes, max_bytes)
    first: list[ParsedComparison] = []

    def keep(c: ParsedComparison) -> None:
        if len(first) < keep_first:
            first.append(c)

    parsed = _parse_data(src, filename or src.name, fmt, max_text_chars, None if keep_first is None else keep,
                         with_keys=True)
    if keep_first is not None:
        parsed.comparisons = first
    if parsed.conflicts:  # before the import's handling of known winners is chosen: say what each does
        parsed.notes.append(_conflicts_note(parsed.conflicts, None))
    if parsed.rater_conflict_count:
        problems = _Problems()
        problems.extend(parsed.problems, parsed.problem_count)
        problems.extend(parsed.rater_conflicts, parsed.rater_conflict_count)
        parsed.problems, parsed.problem_count = problems.listed(), problems.count
    if note := _raters_note(parsed.rated_count, parsed.raters, None):
        parsed.notes.append(note)
    return parsed


def problems_message(problems: list[tuple[int, str]], filename: str | None = None, count: int | None = None,
                     stopped_at: int | None = None) -> str:
    """The user-facing text for bad rows (up to 20 listed): 'line 3: reason', or 'line 1, element 2: reason'
    for an element of a JSON array that shares its line with others. ``count`` is how many problems there are
    when ``problems`` lists the first of them (``len(problems)`` by default): 'at least' that many from
    :data:`MAX_PROBLEMS_COUNTED` or where reading stopped (``stopped_at``, the last line read)."""
    count = len(problems) if count is None else max(count, len(problems))
    at_least = "at least " if stopped_at is not None or count >= MAX_PROBLEMS_COUNTED else ""
    where = f" in {filename}" if filename else ""
    stopped = f" (reading stopped at line {stopped_at:,})" if stopped_at is not None else ""
    head = (f"{at_least}{counted(count, 'problem')}{where}{stopped}; nothing was imported. "
            "Fix these rows and import the file again:")
    body = [f"  line {line}{', ' if _ELEMENT.match(reason) else ': '}{reason}"
            for line, reason in problems[:MAX_REPORTED]]
    if count > len(body):
        body.append(f"  ... and {at_least}{count - len(body):,} more")
    return "\n".join([head, *body])


# --------------------------------------------------------------------------- writing


def _chunks(items: list, size: int = _CHUNK) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _batched(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


class _PromptRow(NamedTuple):
    """A new prompt's stored values (JSON as its text), built by :func:`prepare_import` before any lock."""

    content_hash: str
    text: str | None
    messages: str | None
    source_tag: str | None
    metadata: str | None
    external_id: str | None


class _ResponseRow(NamedTuple):
    """A new response's stored values, as :class:`_PromptRow`; ``n_chars`` is ``len(text)`` as the model's
    default would store it."""

    content_hash: str
    text: str
    n_chars: int
    generator: str | None
    metadata: str | None
    external_id: str | None


_PROMPT_COLUMNS = (*_PromptRow._fields, "import_batch_id", "created_at")
_RESPONSE_COLUMNS = ("prompt_id", *_ResponseRow._fields, "created_at")
_COMPARISON_COLUMNS = ("prompt_id", "response_a_id", "response_b_id", "overlap_target", "judgment_count", "is_gold",
                       "gold_choice", "status", "priority", "priority_strategy", "source_tag", "external_id",
                       "import_batch_id", "created_at")
_JUDGMENT_COLUMNS = ("comparison_id", "source", "choice", "flags", "is_probe", "was_gold", "state", "created_at",
                     "external_annotator", "supersedes_id")
"""The columns an import writes into each table, in the order of its row tuples; every other column is SQL NULL
(or the database's default). Values are stored forms: enums as their value, JSON as its text
(``json.dumps``, as SQLAlchemy's JSON type writes it), None as SQL NULL."""


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _stored_now(table, session: Session) -> Any:
    """This moment as ``table.created_at`` stores it on the session's backend (one value for every row)."""
    dialect = session.get_bind().dialect
    process = table.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
    now = utcnow()
    return now if process is None else process(now)


def _insert_rows(session: Session, table, columns: tuple[str, ...], rows: Iterable[tuple],
                 key: tuple[str, ...] = ()) -> Iterator[list[tuple]]:
    """Insert ``rows`` (tuples of stored values for ``columns``) a batch at a time, taking them lazily (so they
    need not all be built at once); yields each batch: its ``(id, *key columns)`` rows when ``key`` is given,
    else its rows as given.

    SQLite: one executemany of plain INSERTs per batch through the driver, with no per-row work in SQLAlchemy
    (building its parameters was half the time the write lock was held). The ids are given, counted on from
    the table's highest: the write transaction holds SQLite's write lock, so no other connection can insert
    meanwhile, and these are the ids SQLite would pick. PostgreSQL: :func:`_copy_insert_batches`.
    """
    if session.get_bind().dialect.name == "postgresql":
        yield from _copy_insert_batches(session, table, columns, rows, key)
        return
    quote = session.get_bind().dialect.identifier_preparer.quote
    names = ("id", *columns) if key else columns
    statement = (f"INSERT INTO {quote(table.name)} ({', '.join(map(quote, names))}) "
                 f"VALUES ({', '.join('?' * len(names))})")
    connection = session.connection()
    at = [columns.index(name) for name in key]
    next_id = None
    for batch in _batched(rows, _INSERT_BATCH):
        if not key:
            connection.exec_driver_sql(statement, batch)
            yield batch
            continue
        if next_id is None:
            next_id = session.scalar(select(func.coalesce(func.max(table.c.id), 0))) + 1
        first, next_id = next_id, next_id + len(batch)
        connection.exec_driver_sql(statement, [(i, *row) for i, row in zip(range(first, next_id), batch)])
        yield [(i, *(row[k] for k in at)) for i, row in zip(range(first, next_id), batch)]


def _copy(session: Session, target: str, columns: tuple[str, ...], rows: Iterable[tuple]) -> None:
    """COPY ``rows`` into the table named ``target`` through the session's own connection (its transaction).
    A driver error is raised as SQLAlchemy's, as from any other statement (callers catch OperationalError,
    IntegrityError)."""
    import psycopg  # only PostgreSQL comes here
    from psycopg import sql

    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(target), sql.SQL(", ").join(map(sql.Identifier, columns)))
    connection = session.connection()
    try:
        with connection.connection.dbapi_connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:
        raise DBAPIError.instance(statement.as_string(), None, exc, psycopg.Error, hide_parameters=True,
                                  dialect=connection.dialect) from exc


def _copy_insert_batches(session: Session, table, columns: tuple[str, ...], rows: Iterable[tuple],
                         key: tuple[str, ...]) -> Iterator[list[tuple]]:
    """PostgreSQL's :func:`_insert_rows`. Rows whose ids are wanted back are COPYed a batch at a time into a
    temporary staging table, then moved with one INSERT ... SELECT ... RETURNING; the others are COPYed
    straight into the table. A long multi-row INSERT costs more to build and parse than its rows cost to
    store (about 40% of a large import's time); COPY is not parsed as SQL. The staging table has the
    target's column types and no constraints, so the target's constraints (unique hashes, checks) are
    checked by the INSERT and fail as an IntegrityError as before."""
    if not key:
        for batch in _batched(rows, _COPY_BATCH):
            _copy(session, table.name, columns, batch)
            yield batch
        return
    stage_name = f"prefloop_stage_{table.name}"
    quote = session.get_bind().dialect.identifier_preparer.quote
    stage = table_clause(stage_name, *map(column, columns))
    move = insert(table).from_select(list(columns), select(*stage.c), include_defaults=False).returning(
        table.c.id, *(table.columns[name] for name in key))
    made = False
    for batch in _batched(rows, _COPY_BATCH):
        if made:
            session.execute(sql_text(f"TRUNCATE {quote(stage_name)}"))
        else:  # with the first batch: an import that adds nothing (a re-import) makes no table
            session.execute(sql_text(f"CREATE TEMPORARY TABLE {quote(stage_name)} ON COMMIT DROP AS SELECT "
                                     f"{', '.join(map(quote, columns))} FROM {quote(table.name)} WITH NO DATA"))
            made = True
        _copy(session, stage_name, columns, batch)
        del batch
        yield [tuple(row) for row in session.execute(move)]
    if made:
        session.execute(sql_text(f"DROP TABLE {quote(stage_name)}"))


def _lookup(session: Session, stmt, values: list) -> Iterator:
    """Run ``stmt`` (with an expanding ``keys`` parameter) over ``values`` in chunks."""
    for chunk in _chunks(values):
        yield from session.execute(stmt, {"keys": chunk}).all()  # all at once: row by row is 4x the time


@dataclass(slots=True)
class _Pair:
    prompt_hash: str
    hash_a: str
    hash_b: str
    line: int
    source_tag: str | None
    priority: float
    """Its queue priority if it is new (:func:`seeded_priority` with the settings' queue seed)."""
    row_id: str | None = None
    outcomes: dict[Choice, int] = field(default_factory=dict)
    """Distinct known outcomes in this pair's A/B terms -> first line (for gold, every row's; else those of
    rows that name no rater)."""
    rated: dict[str, Choice] | None = None
    """Rater -> their known outcome in this pair's A/B terms, for imported judgments (None while there is none)."""


@dataclass(eq=False)
class PreparedImport:
    """A file read and checked by :func:`prepare_import`, with no database touched: what :func:`import_file`
    writes. It holds each distinct text once (the import's memory), in the rows to be stored (built here, not
    while the write holds a lock); the write empties it, so it is written once."""

    name: str
    file_hash: str
    format: str
    rows: int
    notes: list[str]
    source_tag: str | None
    known_winner: str
    prompts: dict[str, _PromptRow] = field(repr=False)
    responses: dict[tuple[str, str], _ResponseRow] = field(repr=False)
    pairs: dict[tuple[str, str, str], _Pair] = field(repr=False)
    other_forms: dict[str, str | None] = field(default_factory=dict, repr=False)
    """:attr:`ParsedFile.other_forms`: each of ``prompts``' hashes in the other form, computed once as it was read."""
    written: bool = False


def prepare_import(settings: Settings, source: str | Path | bytes, *, filename: str | None = None,
                   fmt: str | None = None, source_tag: str | None = None,
                   known_winner: Literal["judgment", "gold", "ignore"] = "judgment") -> PreparedImport:
    """Pure (no database, no role check): read and check every row of ``source`` for :func:`import_file`.

    Raises ImportValidationError (annotate.errors) for bad rows (line number + reason; the message counts them
    and shows up to 20, ``.problems`` has the first :data:`MAX_PROBLEMS_KEPT` and ``.count`` counts them, up
    to :data:`MAX_PROBLEMS_COUNTED`, where reading stops).
    Callers prepare before they open the write unit of work: on SQLite a write transaction holds the database's
    write lock from its first statement, and every annotator's judgment waits on that lock while the file,
    which takes most of an import's time, is read.
    """
    if known_winner not in ("judgment", "gold", "ignore"):
        raise PrefloopError("known_winner must be judgment, gold or ignore")
    if source_tag is not None and len(source_tag) > MAX_TAG_CHARS:
        raise PrefloopError(f"the source tag is longer than {MAX_TAG_CHARS} characters")
    if source_tag is not None and "\x00" in source_tag:
        raise PrefloopError("the source tag contains a NUL character, which PostgreSQL cannot store; remove it")

    src = _Source(source, settings.max_upload_mb * 2**20)
    name = filename or src.name or "upload"
    # Rows go straight into what will be written (each text once), not through a list of every comparison.
    prompts: dict[str, _PromptRow] = {}
    responses: dict[tuple[str, str], _ResponseRow] = {}
    pairs: dict[tuple[str, str, str], _Pair] = {}

    def keep(c: ParsedComparison) -> None:  # c.prompt_hash: the hash it is stored under (_PromptForms)
        tag = source_tag or c.source_tag
        if c.prompt_hash not in prompts:
            is_text = isinstance(c.prompt, str)
            prompts[c.prompt_hash] = _PromptRow(c.prompt_hash, c.prompt if is_text else None,
                                                None if is_text else json.dumps(c.prompt), tag,
                                                _json_text(c.metadata), c.prompt_id)
        for text, h, gen, meta, ext in ((c.response_a, c.hash_a, c.generator_a, c.response_a_meta, c.response_a_id),
                                        (c.response_b, c.hash_b, c.generator_b, c.response_b_meta, c.response_b_id)):
            if (c.prompt_hash, h) not in responses:
                responses[(c.prompt_hash, h)] = _ResponseRow(h, text, len(text), gen, _json_text(meta), ext)
        pair = pairs.get(c.pair_key)
        if pair is None:
            pair = pairs[c.pair_key] = _Pair(c.prompt_hash, c.hash_a, c.hash_b, c.line, tag, seeded_priority(
                settings.queue_seed, c.prompt_hash, c.hash_a, c.hash_b), c.row_id)
        elif pair.row_id is None:
            pair.row_id = c.row_id
        if c.winner is not None and known_winner != "ignore":
            choice = c.winner if c.hash_a == pair.hash_a else _flip(c.winner)
            if c.annotator is None or known_winner == "gold":  # a gold pair has one answer, whoever gave it
                pair.outcomes.setdefault(choice, c.line)
            else:  # a rater's other answer for the pair is a problem (_parse_data)
                if pair.rated is None:
                    pair.rated = {}
                pair.rated.setdefault(c.annotator, choice)

    parsed = _parse_data(src, name, fmt, settings.max_text_chars, keep)
    if parsed.conflicts and known_winner != "gold":  # as gold they are problems (below)
        parsed.notes.append(_conflicts_note(parsed.conflicts, known_winner))
    if note := _raters_note(parsed.rated_count, parsed.raters, known_winner):
        parsed.notes.append(note)
    problems = _Problems()
    problems.extend(parsed.problems, parsed.problem_count)
    if known_winner != "gold":  # as gold the rater is not read, and the pair's two answers are refused below
        problems.extend(parsed.rater_conflicts, parsed.rater_conflict_count)
    if known_winner == "gold":
        for pair in pairs.values():
            if len(pair.outcomes) > 1:
                lines = sorted(pair.outcomes.values())
                problems.extend((line, f"conflicting known outcomes for the same pair (lines "
                                       f"{', '.join(map(str, lines))}); a gold pair needs one answer")
                                for line in lines[1:])
    if problems:
        listed = problems.listed()
        raise ImportValidationError(problems_message(listed, name, problems.count, parsed.stopped_at), listed,
                                    count=problems.count)
    return PreparedImport(name=name, file_hash=src.sha256, format=parsed.format, rows=parsed.rows,
                          notes=list(parsed.notes), source_tag=source_tag, known_winner=known_winner,
                          prompts=prompts, responses=responses, pairs=pairs, other_forms=parsed.other_forms)


def import_file(session: Session, settings: Settings, source: str | Path | bytes | PreparedImport, *,
                filename: str | None = None, fmt: str | None = None, actor: Actor | None = None,
                system: bool = False, source_tag: str | None = None,
                known_winner: Literal["judgment", "gold", "ignore"] | None = None,
                overlap: int | None = None) -> ImportReport:
    """Admin-only (require_admin unless system=True for the CLI run by the operator), checked before anything
    is written. All-or-nothing: raises ImportValidationError (annotate.errors) for bad rows (line number + reason,
    the message counts them and shows up to 20, `.problems` has the first 1,000, `.count` counts them, up to a
    million) and writes nothing if any row is bad. Idempotent: importing the same content twice adds 0.
    Records an ImportBatch and an audit event ('import').

    ``source`` is a file (path or bytes), read by :func:`prepare_import` with ``filename``, ``fmt``,
    ``source_tag`` and ``known_winner`` before the session is used, or what :func:`prepare_import` returned
    (those four then given to it, not here). Give the file prepared where the caller's write unit of work
    holds a lock from its start (the admin page's process-wide gate for SQLite writers).

    Known outcomes (``known_winner``, ``judgment`` by default): ``judgment`` stores each as an imported
    judgment (no annotator) counted toward the comparison's overlap; ``gold`` marks new
    comparisons gold with that answer (existing comparisons are left as they
    are); ``ignore`` drops them. Idempotency rule for judgments: an outcome that names no rater counts once
    per comparison and choice, within a file and across imports (it is skipped when an active imported
    judgment without a rater gives that choice); one that names its rater (``annotator``, stored as
    ``external_annotator``) counts once per comparison and rater: the same answer again is skipped, another
    answer supersedes the rater's active one (``state`` superseded, ``supersedes_id`` on the new row, as an
    annotator's revision). Rows repeating a comparison are merged; the notes name them, and apart the rows that
    give one comparison different winners (each answer without a rater one judgment, so it has no majority).
    """
    if overlap is not None and not 1 <= overlap <= campaign.MAX_OVERLAP:
        raise PrefloopError(f"overlap must be from 1 to {campaign.MAX_OVERLAP}")
    if isinstance(source, PreparedImport):
        given = [name for name, value in (("filename", filename), ("fmt", fmt), ("source_tag", source_tag),
                                          ("known_winner", known_winner)) if value is not None]
        if given:
            raise TypeError(f"give {', '.join(given)} to prepare_import, not with the file it prepared")
        prepared = source
    else:
        # Read before the session's first statement: on SQLite that statement takes the write lock.
        prepared = prepare_import(settings, source, filename=filename, fmt=fmt, source_tag=source_tag,
                                  known_winner=known_winner or "judgment")
    if not system:
        require_admin(session, actor)
    if prepared.written:
        raise PrefloopError("this file was prepared for one import, which has used it; prepare it again")
    # The campaign's overlap by default: an admin's saved value wins over PREFLOOP_OVERLAP.
    options = campaign.get_options(session, settings)
    overlap_target = options.overlap if overlap is None else overlap
    if not 1 <= overlap_target <= campaign.MAX_OVERLAP:
        raise PrefloopError(f"overlap must be from 1 to {campaign.MAX_OVERLAP}")
    name, known_winner, source_tag = prepared.name, prepared.known_winner, prepared.source_tag
    notes = list(prepared.notes)

    if session.get_bind().dialect.name == "postgresql":
        # Imports take turns (until this transaction ends), so one that overlaps another
        # running at the same moment sees its rows and skips them instead of colliding.
        # SQLite's BEGIN IMMEDIATE already serialises writers.
        session.execute(select(func.pg_advisory_xact_lock(advisory_key("import"))))
    user_id = actor.id if actor is not None else None
    # A file imported before holds no newer answers than what is here: its raters' answers that a later import
    # changed stay changed (re-importing an older file, say to raise its overlap, reverted raters' corrections).
    imported_before = session.scalar(select(ImportBatch.id).where(ImportBatch.file_hash == prepared.file_hash)
                                     .order_by(ImportBatch.id.desc()).limit(1))
    batch = ImportBatch(filename=name[:512], file_hash=prepared.file_hash, format=prepared.format,
                        source_tag=source_tag, counts={}, created_by_id=user_id)
    session.add(batch)
    prepared.written = True  # from here on its texts are being emptied into the database
    try:
        session.flush()
        counts = _write(session, batch.id, prepared.prompts, prepared.responses, prepared.pairs, known_winner,
                        overlap_target, supersede=imported_before is None,
                        max_overlap=max(options.max_overlap, overlap_target), other_forms=prepared.other_forms)
    except IntegrityError:
        raise PrefloopError("another import added some of the same content at the same time; "
                            "run this import again (it will skip what is already there)") from None
    finally:
        prepared.pairs.clear()
    if (session.get_bind().dialect.name == "postgresql"
            and counts["responses_added"] + counts["comparisons_added"] >= ANALYZE_AFTER_ROWS):
        # Freshly bulk-loaded rows have no planner statistics until autovacuum gets to them; without
        # them PostgreSQL takes the next import's hash IN-lists as unselective and scans whole tables.
        session.execute(sql_text("ANALYZE prompts, responses, comparisons, judgments"))
    existing_gold_skipped = counts.pop("gold_skipped_existing")
    complete_on_import = counts.pop("complete_on_import")
    superseded = counts.pop("judgments_superseded")
    if kept := counts.pop("rater_answers_kept"):
        notes.append(f"{counted(kept, 'answer')} in this file {'differs' if kept == 1 else 'differ'} from what the "
                     f"same rater ('annotator') gave the pair in a later import; this file was imported before "
                     f"(batch {imported_before}), so the later {'answer stays' if kept == 1 else 'answers stay'} "
                     "(a new file with a rater's answer replaces theirs)")
    raised, closed, reopened = counts.pop("overlap_raised"), counts.pop("closed_existing"), counts.pop("reopened_existing")
    unsettled, most_votes, split = counts.pop("unsettled"), counts.pop("most_votes"), counts.pop("split_existing")
    # More than the judgments they have: several raters' votes can be past the overlap.
    reopen = (f"to have {{}} judged, import the file again with a higher overlap (more than "
              f"{counted(max(overlap_target, most_votes), 'judgment')}: it raises the overlap of its pairs "
              "already here)")
    if unsettled:
        one = unsettled == 1
        notes.append(f"{counted(unsettled, 'new comparison has', 'new comparisons have')} no majority among the "
                     f"file's answers (raters split evenly): {'it needs' if one else 'each needs'} one more "
                     f"judgment, as adaptive overlap asks when annotators disagree, so annotators will see "
                     f"{'it' if one else 'them'}")
    if split:
        one = split == 1
        notes.append(f"{counted(split, 'comparison')} already here {'has' if one else 'have'} no majority once "
                     f"this file's answers are in (votes split evenly): {'it needs' if one else 'each needs'} one "
                     f"more judgment, as adaptive overlap asks when annotators disagree, so annotators will see "
                     f"{'it' if one else 'them'}")
    if complete_on_import:
        # Otherwise an import meant for annotation silently leaves the queue as it was.
        one = complete_on_import == 1
        notes.append(f"{counted(complete_on_import, 'new comparison already has', 'new comparisons already have')} "
                     f"the {counted(overlap_target, 'judgment')} {'it needs' if one else 'they need'} "
                     "from the file's known "
                     f"winners, so annotators will not see {'it' if one else 'them'}; "
                     + reopen.format("it" if one else "them"))
    if closed:
        # Known winners for pairs imported before without them (say, with known winners ignored): labels that
        # arrive later are imported judgments, but pairs leaving annotators' queue must not go unsaid.
        one = closed == 1
        notes.append(f"{counted(closed, 'comparison')} already here {'was' if one else 'were'} waiting for "
                     "annotators and now {} the judgments {} from the file's known winners, so annotators will "
                     "not see {} any more; ".format(*(("has", "it needs", "it") if one else ("have", "they need", "them")))
                     + reopen.format("it" if one else "them"))
    if raised:
        one = raised == 1
        notes.append(f"{counted(raised, 'comparison')} already here had an overlap below {overlap_target}; "
                     f"{'it needs' if one else 'they need'} {counted(overlap_target, 'judgment')} now"
                     + (f", so {counted(reopened, 'comparison is', 'comparisons are')} back in annotators' queue"
                        if reopened else ""))
    if existing_gold_skipped:
        notes.append(
            "1 comparison already existed; its known outcome was not turned into a gold answer"
            if existing_gold_skipped == 1 else
            f"{existing_gold_skipped:,} comparisons already existed; their known outcomes were not turned into gold "
            "answers")
    if superseded:
        notes.append(f"{counted(superseded, 'imported judgment replaces', 'imported judgments replace')} the "
                     "answer the same rater ('annotator') gave the pair in an earlier import, now superseded")
    if overlap_target > 1 and (counts["comparisons_added"] or raised):
        notes.extend(overlap_notes(session, overlap_target, options.max_overlap))
    report = ImportReport(format=prepared.format, rows=prepared.rows, notes=notes, batch_id=batch.id, **counts)
    batch.counts = {**counts, "rows": prepared.rows, "known_winner": known_winner, "overlap": overlap_target}
    audit(session, actor, "import", batch_id=batch.id, filename=name[:512], format=prepared.format,
          source_tag=source_tag, known_winner=known_winner, **counts, rows=prepared.rows)
    return report


def _other_form(prompt: str | list | None) -> str | None:
    """The hash of ``prompt`` in its other form: a text prompt's as a chat of one user turn, and such a
    chat's as text; None for a chat of several turns or roles."""
    if isinstance(prompt, str):
        return prompt_hash([{"role": "user", "content": prompt}])
    if (isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], dict)
            and set(prompt[0]) == {"role", "content"} and prompt[0]["role"] == "user"
            and isinstance(prompt[0]["content"], str)):
        return prompt_hash(prompt[0]["content"])
    return None


def overlap_notes(session: Session, overlap: int, max_overlap: int) -> list[str]:
    """What an overlap above the campaign's maximum, or above the people who can annotate, means for the
    pairs that need it (an import allows both; the Settings page refuses the first for the campaign)."""
    notes = []
    if overlap > max_overlap:
        notes.append(f"overlap {overlap} is above the campaign's maximum overlap ({max_overlap}, the most adaptive "
                     f"overlap asks for and the Settings page allows): these comparisons need "
                     f"{counted(overlap, 'judgment')} all the same")
    people = session.scalar(select(func.count(User.id)).where(User.active.is_(True))) or 0
    if overlap > people:
        notes.append(f"overlap {overlap}: each of these comparisons needs {counted(overlap, 'judgment')} from "
                     f"different people (imported answers count), and {counted(people, 'active account')} can "
                     "annotate now: add accounts on the Users page, or pairs short of answers stay in the queue")
    return notes


class _PromptForms:
    """The hash each prompt of a file is stored under: its own, or that of its other form (:func:`_other_form`)
    when that form came earlier in the file (one prompt, as a database keeps it)."""

    def __init__(self) -> None:
        self.other: dict[str, str | None] = {}
        """Each stored hash, and the hash of that prompt in its other form (None: it has none)."""

    def stored_as(self, c: ParsedComparison) -> str:
        if c.prompt_hash in self.other:
            return c.prompt_hash
        alt = _other_form(c.prompt)
        if alt in self.other:
            return alt
        self.other[c.prompt_hash] = alt
        return c.prompt_hash


@dataclass
class _Existing:
    """What of a file a database holds already (see :func:`_find_existing`)."""

    prompt_ids: dict[str, int]
    """The file's prompt hash -> the id of that prompt here (in either form)."""
    response_ids: dict[tuple[str, str], int]
    """(the file's prompt hash, response hash) -> the id of that response here."""
    comparisons: dict[frozenset, Any]
    """{response id, response id} -> the row of a comparison of two of those responses (stored in either order)."""


def _find_existing(session: Session, prompt_hashes: Iterable[str], other_form: Callable[[str], str | None],
                   response_keys: Container[tuple[str, str]], pairs: Iterable[Any]) -> _Existing:
    """Look up the prompts, responses and comparisons of a file (``pairs``: objects with ``prompt_hash``,
    ``hash_a`` and ``hash_b``) that are here already: the import (:func:`_write`) and the Import page's count
    before it (:func:`count_present`) read the database the same way. Reads only."""
    P, R, C = Prompt.__table__, Response.__table__, Comparison.__table__
    keys = bindparam("keys", expanding=True)
    hashes = list(prompt_hashes)
    prompt_ids: dict[str, int] = {h: i for i, h in _lookup(
        session, select(P.c.id, P.c.content_hash).where(P.c.content_hash.in_(keys)), hashes)}
    # A text prompt and a chat of that one user turn are one prompt: a preference export that mixes chats and
    # text writes every text prompt as such a chat (one column, one type), and imported back it made a second
    # prompt with every pair of the first again.
    other_forms = {alt: h for h in hashes if h not in prompt_ids and (alt := other_form(h))}
    if other_forms:
        taken = set(prompt_ids.values())
        for i, alt in _lookup(session, select(P.c.id, P.c.content_hash).where(P.c.content_hash.in_(keys)),
                              list(other_forms)):
            if i not in taken:  # both forms in this file: the other one is that prompt already
                prompt_ids[other_forms[alt]] = i
                taken.add(i)
    # Responses: only prompts that already existed can already have them.
    response_ids: dict[tuple[str, str], int] = {}
    old_prompt_by_id = {i: h for h, i in prompt_ids.items()}
    for rid, pid, h in _lookup(session, select(R.c.id, R.c.prompt_id, R.c.content_hash).where(
            R.c.prompt_id.in_(keys)), list(old_prompt_by_id)):
        key = (old_prompt_by_id[pid], h)
        if key in response_keys:
            response_ids[key] = rid
    # Comparisons: only pairs of pre-existing responses can exist, stored in either order.
    candidates: set[int] = set()
    for p in pairs:
        a, b = response_ids.get((p.prompt_hash, p.hash_a)), response_ids.get((p.prompt_hash, p.hash_b))
        if a is not None and b is not None:
            candidates.update((a, b))
    comparisons: dict[frozenset, Any] = {}
    for row in _lookup(session, select(C.c.id, C.c.response_a_id, C.c.response_b_id, C.c.is_gold, C.c.status,
                                       C.c.judgment_count, C.c.overlap_target).where(
            C.c.response_a_id.in_(keys)), sorted(candidates)):
        comparisons[frozenset((row.response_a_id, row.response_b_id))] = row
    return _Existing(prompt_ids, response_ids, comparisons)


def count_present(session: Session, keys: PairKeys) -> int:
    """How many of a parsed file's pairs (:attr:`ParsedFile.pair_keys`) are here already: what importing it now
    would report as already present. Reads only (looked up as the import looks them up)."""
    found = _find_existing(session, keys.other_form, keys.other_form.get,
                           {(k.prompt_hash, h) for k in keys.pairs for h in (k.hash_a, k.hash_b)}, keys.pairs)
    ids = found.response_ids
    return sum(frozenset((ids.get((k.prompt_hash, k.hash_a)), ids.get((k.prompt_hash, k.hash_b))))
               in found.comparisons for k in keys.pairs)


def _write(session: Session, batch_id: int, prompts: dict[str, _PromptRow],
           responses: dict[tuple[str, str], _ResponseRow], pairs: dict[tuple[str, str, str], _Pair],
           known_winner: str, overlap_target: int, *, supersede: bool = True,
           max_overlap: int | None = None, other_forms: Mapping[str, str | None]) -> dict[str, int]:
    """Insert what is new. Empties ``prompts`` and ``responses`` as their rows are written, so that the texts
    of one stage are freed before the next (an import's memory peaks at its texts once, not at the sum).

    ``other_forms``: each prompt hash's other form (:attr:`ParsedFile.other_forms`), looked up where the hash
    is not here. Without ``supersede`` (a file imported before) a rater's answer that differs from theirs here is kept out.
    A new pair whose imported votes meet its overlap without a majority (raters split 1-1) needs one more
    judgment, up to ``max_overlap``, as adaptive overlap asks of annotators who disagree."""
    max_overlap = overlap_target if max_overlap is None else max_overlap
    # Prompts: look up by hash in chunks, insert the missing ones in bulk.
    P, R, C, J = Prompt.__table__, Response.__table__, Comparison.__table__, Judgment.__table__
    now = _stored_now(P, session)  # every row of one import has the same created_at
    keys = bindparam("keys", expanding=True)
    found = _find_existing(session, prompts, other_forms.get, responses, pairs.values())
    prompt_ids, response_ids, existing = found.prompt_ids, found.response_ids, found.comparisons
    new_prompts = [h for h in prompts if h not in prompt_ids]
    for inserted in _insert_rows(session, P, _PROMPT_COLUMNS, ((*prompts.pop(h), batch_id, now) for h in new_prompts),
                                 key=("content_hash",)):
        prompt_ids.update((h, i) for i, h in inserted)
    prompts.clear()

    new_responses = [key for key in responses if key not in response_ids]
    prompt_hash_by_id = {i: h for h, i in prompt_ids.items()}
    for inserted in _insert_rows(session, R, _RESPONSE_COLUMNS,
                                 ((prompt_ids[key[0]], *responses.pop(key), now) for key in new_responses),
                                 key=("prompt_id", "content_hash")):
        response_ids.update(((prompt_hash_by_id[pid], h), rid) for rid, pid, h in inserted)
    responses.clear()
    del prompt_hash_by_id

    gold = known_winner == "gold"
    old_outcomes: dict[int, tuple[bool, set, dict]] = {}
    old_found: dict[int, Any] = {}  # comparisons already here that this file gives, by id
    outcomes_by_pair: dict[tuple[int, int], list[tuple[Choice, str | None]]] = {}
    gold_added = gold_skipped = existing_count = complete_on_import = judgments_added = unsettled = 0
    most_votes = 0  # the most imported votes a new pair complete on import has
    open_, complete = ComparisonStatus.open.value, ComparisonStatus.complete.value

    def new_rows() -> Iterator[tuple]:
        nonlocal gold_added, gold_skipped, existing_count, complete_on_import, unsettled, most_votes
        for p in pairs.values():
            a, b = response_ids[(p.prompt_hash, p.hash_a)], response_ids[(p.prompt_hash, p.hash_b)]
            found = existing.get(frozenset((a, b)))
            if found is not None:
                existing_count += 1
                old_found[found.id] = found
                if p.outcomes and gold:
                    gold_skipped += 1
                elif p.outcomes or p.rated:
                    flip = found.response_a_id != a
                    old_outcomes[found.id] = (found.is_gold, {_flip(c) if flip else c for c in p.outcomes},
                                              {r: _flip(c) if flip else c for r, c in (p.rated or {}).items()})
                continue
            judged, is_gold, gold_choice, status, target = 0, False, None, open_, overlap_target
            if gold and p.outcomes:
                is_gold, gold_choice = True, next(iter(p.outcomes)).value
                gold_added += 1
            elif p.outcomes or p.rated:
                votes = [(c, None) for c in sorted(p.outcomes, key=lambda c: c.value)]
                votes.extend((c, r) for r, c in (p.rated or {}).items())
                judged = len(votes)
                if judged >= target and judged < max_overlap and not _settled(c for c, _ in votes):
                    target, unsettled = judged + 1, unsettled + 1
                if judged >= target:
                    status = complete
                    complete_on_import += 1
                    most_votes = max(most_votes, judged)
                outcomes_by_pair[(a, b)] = votes
            yield (prompt_ids[p.prompt_hash], a, b, target, judged, is_gold, gold_choice, status,
                   p.priority, "random", p.source_tag, p.row_id, batch_id, now)

    def insert_judgments(rows: Iterable[tuple]) -> None:
        nonlocal judgments_added
        for inserted in _insert_rows(session, J, _JUDGMENT_COLUMNS, rows):
            judgments_added += len(inserted)

    # Batch by batch: each batch's judgments go in with it, so no list of every new row is built.
    comparisons_added = 0
    for inserted in _insert_rows(session, C, _COMPARISON_COLUMNS, new_rows(),
                                 key=("response_a_id", "response_b_id")):
        comparisons_added += len(inserted)
        insert_judgments(_judgment_row(cid, c, False, now, rater) for cid, a, b in inserted
                         for c, rater in outcomes_by_pair.pop((a, b), ()))

    # Outcomes for comparisons that already existed: skip a choice already imported without a rater, and a
    # rater's answer already imported; a rater's other answer supersedes theirs.
    bumps, superseded = [], []
    changed: set[int] = set()  # pairs already here whose votes this file adds to or changes
    kept_later = 0  # raters' answers that differ from theirs here, in a file imported before
    if old_outcomes:
        have: dict[int, set] = defaultdict(set)
        have_rated: dict[tuple[int, str], tuple[int, Choice]] = {}
        for jid, cid, choice, rater in _lookup(session, select(
                J.c.id, J.c.comparison_id, J.c.choice, J.c.external_annotator).where(
                J.c.comparison_id.in_(keys), J.c.source == JudgmentSource.imported,
                J.c.state == JudgmentState.active), list(old_outcomes)):
            if rater is None:
                have[cid].add(choice)
            else:
                have_rated[(cid, rater)] = (jid, choice)
        judgments = []
        for cid, (is_gold, choices, rated) in old_outcomes.items():
            add = sorted(choices - have[cid], key=lambda c: c.value)
            judgments.extend(_judgment_row(cid, c, is_gold, now) for c in add)
            added = len(add)
            for rater, choice in rated.items():
                live = have_rated.get((cid, rater))
                if live is None:
                    added += 1
                elif live[1] != choice and supersede:
                    superseded.append({"jid": live[0]})
                    changed.add(cid)
                else:
                    kept_later += live[1] != choice
                    continue
                judgments.append(_judgment_row(cid, choice, is_gold, now, rater, None if live is None else live[0]))
            if added:
                bumps.append({"cid": cid, "delta": added})
                changed.add(cid)
        if superseded:  # before the rows that replace them: never two live answers from one rater
            session.execute(update(J).where(J.c.id == bindparam("jid"), J.c.state == JudgmentState.active)
                            .values(state=JudgmentState.superseded), superseded)
        insert_judgments(judgments)
    delta = {bump["cid"]: bump["delta"] for bump in bumps}
    # A pair already here that has all its judgments but no majority once this file's answers are in (a rater's
    # answer added or changed split its votes evenly) needs one more, as a new pair's split votes do (above)
    # and as adaptive overlap asks when annotators disagree: it stayed complete and left the queue undecided.
    split: dict[int, int] = {}  # comparison id -> its new overlap
    if changed:
        votes: dict[int, list[Choice]] = defaultdict(list)
        for cid, choice in _lookup(session, select(J.c.comparison_id, J.c.choice).where(
                J.c.comparison_id.in_(keys), J.c.state == JudgmentState.active, J.c.is_probe.is_(False)),
                sorted(changed)):
            votes[cid].append(Choice(choice))
        for cid in sorted(changed):
            found = old_found[cid]
            judged = found.judgment_count + delta.get(cid, 0)
            if (not found.is_gold and found.status != ComparisonStatus.retired
                    and max(found.overlap_target, overlap_target) <= judged < max_overlap
                    and not _settled(votes[cid])):
                split[cid] = judged + 1
    # A pair already here whose overlap is below this import's takes it (before the bumps below, whose status
    # rule then reads it): importing a file again "with a higher overlap" reopens its pairs for annotators.
    # A split pair takes the higher overlap its split asks for (below), and its note says so.
    raised = [{"cid": cid} for cid, found in old_found.items() if found.overlap_target < overlap_target
              and not found.is_gold and found.status != ComparisonStatus.retired and cid not in split]
    for rows, target in ((raised, overlap_target),
                         ([{"cid": cid, "target": t} for cid, t in split.items()], bindparam("target"))):
        if rows:
            session.execute(
                # Not retired meanwhile: the check above read the pair early in a long import (PostgreSQL), and
                # its judgment count is read here (an annotator's judgment may have come in since).
                update(C).where(C.c.id == bindparam("cid"), C.c.overlap_target < target,
                                C.c.status != ComparisonStatus.retired, C.c.is_gold.is_(False)).values(
                    overlap_target=target,
                    status=case((C.c.judgment_count >= target, ComparisonStatus.complete),
                                else_=ComparisonStatus.open)),
                rows)
    closed = reopened = 0  # of the pairs already here: open before and complete now, and the other way round
    for cid, found in old_found.items():
        if found.is_gold or found.status == ComparisonStatus.retired:
            continue
        now_complete = (found.judgment_count + delta.get(cid, 0)) >= max(found.overlap_target, overlap_target,
                                                                          split.get(cid, 0))
        closed += found.status == ComparisonStatus.open and now_complete
        reopened += found.status == ComparisonStatus.complete and not now_complete and cid not in split
    if bumps:
        new_count = C.c.judgment_count + bindparam("delta")
        session.execute(
            update(C).where(C.c.id == bindparam("cid")).values(
                judgment_count=new_count,
                status=case(
                    (C.c.status == ComparisonStatus.retired, C.c.status),
                    (C.c.is_gold, ComparisonStatus.open),
                    (new_count >= C.c.overlap_target, ComparisonStatus.complete),
                    else_=ComparisonStatus.open)),
            bumps)
    return {"prompts_added": len(new_prompts), "responses_added": len(new_responses),
            "comparisons_added": comparisons_added, "comparisons_existing": existing_count,
            "judgments_added": judgments_added, "gold_added": gold_added, "gold_skipped_existing": gold_skipped,
            "complete_on_import": complete_on_import, "judgments_superseded": len(superseded),
            "rater_answers_kept": kept_later, "unsettled": unsettled, "most_votes": most_votes,
            "overlap_raised": len(raised), "closed_existing": closed, "reopened_existing": reopened,
            "split_existing": len(split)}


def majority(counts: Mapping[Any, int]) -> Any:
    """The answer with more votes than any other (a strict plurality), or None when two lead together: the
    preference export's rule, which an import (a split pair needs another judgment) and the simulator (the
    label of a pair several rows give) follow too."""
    ranked = sorted(counts.values(), reverse=True)
    if len(ranked) > 1 and ranked[0] == ranked[1]:
        return None
    return max(counts, key=counts.__getitem__)


def _settled(choices: Iterable[Choice]) -> bool:
    """Whether one answer has a majority (:func:`majority`)."""
    return majority(Counter(choices)) is not None


def _judgment_row(comparison_id: int, choice: Choice, was_gold: bool, now: Any, rater: str | None = None,
                  supersedes: int | None = None) -> tuple:
    """An imported judgment's stored values for :data:`_JUDGMENT_COLUMNS` (no annotator of ours; ``rater`` is
    the file's, and ``supersedes`` the id of that rater's earlier answer it replaces)."""
    return (comparison_id, JudgmentSource.imported.value, choice.value, "[]", False, was_gold,
            JudgmentState.active.value, now, rater, supersedes)
