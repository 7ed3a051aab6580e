"""Exports: aggregated preferences for TRL / Hugging Face ``datasets`` and raw judgments.

Every public function is admin-only (it calls :func:`~annotate.accounts.require_admin`)
and records one ``export`` audit event with the filters and counts. Those that take a
session need a write unit of work (``with db.begin() as session:``); :func:`save` and
:func:`download` take the :class:`~annotate.db.Database` instead and read the whole export
from one :func:`snapshot`, a read unit of work, so a long export on SQLite does not hold
the write lock that every annotator's judgment waits for, and on PostgreSQL its statements
all see the same commits; they record the audit event afterwards in a short write.

Aggregation rule (preference exports)
-------------------------------------
* Only judgments with ``state == active`` (with ``until``: current at ``until``,
  see below) that are not self-consistency probes count as votes. Superseded
  and retracted judgments are ignored (the revision that replaced a superseded
  one is the active vote). Imported judgments (``source == imported``) count as
  votes unless ``include_imported=False``: one for each rater an imported row
  names (``external_annotator``; a later import of another answer from that
  rater supersedes theirs), and one per answer for rows that name none.
* ``until`` exports the votes as they stood just before that instant, not
  today's votes cast before it: a judgment counts when it was created before
  ``until`` and had not yet stopped being current, whatever its state now. A
  retracted judgment stopped at its ``retracted_at``; a superseded one when the
  judgment that replaced it (the newer row whose ``supersedes_id`` names it) was
  created. So a vote revised after ``until`` counts with its old choice, a vote
  undone after ``until`` still counts, and one undone before it does not (judging
  again after an undo supersedes the retracted row, which stopped at the undo).
  A non-active row with neither time is left out. An annotator (or an imported
  rater) has at most one live judgment per comparison at any time, so this is at
  most one vote each: the votes an export run at ``until`` would have counted.
* ``since`` filters those votes (today's, or those standing at ``until``) by when
  they were cast: a vote cast before ``since`` is left out even though it still
  stood in the window, and so is a revision cast after ``until``.
* The other filters on judgments (``annotators``, ``raters``, ``include_imported``) choose
  which votes count; the comparison filters (``source_tags``, ``exclude_gold``)
  choose which comparisons are considered.
* Each comparison's votes are counted over the four choices ``a``, ``b``, ``tie``
  and ``both_bad``. The majority is the choice with a strict plurality; when two
  or more choices share the top count (for example one vote for A and one for B)
  the comparison is not exported.
* A comparison whose majority is ``a`` or ``b`` is exported with that response as
  ``chosen``. Majorities of ``tie`` or ``both_bad`` are excluded unless
  ``include_ties`` / ``include_both_bad`` ask for them.
* ``agreement`` = majority votes / all counted votes; comparisons with
  ``agreement < min_agreement`` are dropped, and so are those with fewer than
  ``min_votes`` counted votes (one vote has agreement 1.0: ``min_agreement``
  alone keeps every pair judged once, mid-campaign at overlap 2 or 3 too).
* Gold comparisons: the known gold answer is never a vote, only human (and
  imported) judgments are; ``exclude_gold=True`` drops gold comparisons entirely.
* Retired comparisons (an admin took them out of the campaign: ``dashboard.retire``)
  are never exported here; the raw judgment export keeps their judgments, with
  ``comparison_status`` = ``retired``.

Row format (TRL preference format)
----------------------------------
One row per exported comparison with ``prompt``, ``chosen`` and ``rejected``.
Plain-text prompts give strings. Chat prompts give TRL's conversational format:
``prompt`` is the list of ``{"role", "content"}`` messages (other message keys are
dropped so every row has the same type), ``chosen`` is
``[{"role": "assistant", "content": <text>}]`` and ``rejected`` likewise; a response
imported as several messages (a TRL row whose completion goes on past one assistant
turn) is given back as those messages, roles kept (a text-only export gives the
text annotators saw, later turns labelled ``Human:``/``Assistant:``). A file
or ``datasets`` column must have a single type, so when one export mixes chat and
text prompts, every text prompt becomes ``[{"role": "user", "content": text}]``
and the whole export is conversational.

Extra columns: ``comparison_id``, ``prompt_id``, ``n_judgments`` (counted votes),
``agreement`` and ``source_tag`` (the comparison's tag, else its prompt's), and the
ids the imported file gave: ``external_id`` (the pair's row), ``prompt_external_id``,
``chosen_external_id`` and ``rejected_external_id``; a missing tag or id is null in
Parquet and ``datasets``, and ``""`` in JSONL (``datasets`` types a JSON column from
the first 10 MB of the file, so a column null there and given later would not load). With
``margin=True`` a float ``margin``: the mean strength of the winning votes
(slightly = 1, clearly = 2, much = 3; votes without a strength are left out of
the mean) and 0 when none of them gave one (always 0 for tie and both-bad rows).
When ties are included, a bool ``is_tie`` column is added; when both-bad
majorities are included, a bool ``is_both_bad`` column. Tie and both-bad rows
keep ``chosen`` = A and ``rejected`` = B in canonical order, so a trainer that
does not read those columns must filter them out itself.

Raw judgments
-------------
Every judgment matching the filters, whatever its state (superseded and
retracted rows are kept and flagged by ``state``; probes by ``is_probe``; the pair's
``comparison_status`` now, ``open``, ``complete`` or ``retired``), with
the prompt and both responses, and the imported ids (``external_id``,
``prompt_external_id``, ``response_a_external_id``, ``response_b_external_id``)
and rater (``external_annotator``: the ``annotator`` an imported row named; ``annotator``
is the user who judged, null for imported rows).
Aggregation-only filters (``include_ties``, ``include_both_bad``,
``min_agreement``, ``min_votes``) do not apply. Parquet has typed columns (chat prompts as JSON
strings, as in JSONL) and is the format to load large exports with ``datasets``:
its JSON loader types each column from the file's first 10 MB, so a column that
is null there (``strength``, ``retracted_at``, …) and set later would not load. In CSV, ``flags`` and
chat prompts are JSON strings, booleans are ``true``/``false``, missing values
are empty cells, and a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab
or a carriage return is prefixed with a single quote (``'``) so spreadsheets do
not run it as a formula. Numbers are written as numbers and never prefixed.

``since``/``until`` select raw rows by ``created_at`` only, and each row is
written as stored now: ``state`` and ``retracted_at`` are today's, not as they
were at ``until`` (a row undone after ``until`` reads ``retracted``, with its
later ``retracted_at``). The raw export is the append-only log itself, meant for
audit and re-aggregation, and rewriting a stored field to an earlier value would
make a file that no longer matches the database. Note that the row that
superseded one after ``until`` is not in such a file: to rebuild the state at a
time from raw rows, export without ``until`` and use ``created_at``,
``retracted_at`` and ``supersedes_id``, or use the preference export with ``until``.

Date filters: ``since`` is inclusive, ``until`` exclusive (a vote replaced or
undone exactly at ``until`` still counts, its replacement does not); naive
datetimes are taken as UTC.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import uuid
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from annotate.accounts import Actor, audit, require_admin
from annotate.db import Database
from annotate.errors import NotFound, PrefloopError
from annotate.ingest import CSV_GUARDED, RESPONSE_MESSAGES, ROLES, majority, render_messages
from annotate.models import (
    Choice,
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentSource,
    JudgmentState,
    Prompt,
    Response,
    User,
)



JUDGMENT_FIELDS: tuple[str, ...] = (
    "judgment_id", "comparison_id", "prompt_id", "response_a_id", "response_b_id",
    "annotator", "external_annotator", "source", "choice", "choice_shown", "strength", "rationale", "flags",
    "a_on_left", "time_spent_ms", "is_probe", "was_gold", "is_gold", "state",
    "supersedes_id", "retracted_at", "model_version_id", "acquisition_strategy",
    "acquisition_score", "created_at", "source_tag", "external_id", "prompt_external_id",
    "response_a_external_id", "response_b_external_id", "prompt", "response_a", "response_b",
    "comparison_status",  # last: added 2026-11-29, after files read by column position
)
"""The columns of the raw judgment export, in file order."""


@dataclass(frozen=True)
class ExportFilter:
    """Which judgments and comparisons an export covers (see the module docstring)."""

    since: datetime | None = None
    """Judgments created at or after this instant (naive = UTC)."""
    until: datetime | None = None
    """Judgments created before this instant (naive = UTC); preference exports count
    the votes as they stood then, raw exports write rows as stored now."""
    annotators: tuple[str, ...] = ()
    """Usernames whose judgments count; empty (and no ``raters``) means everyone, and imported rows."""
    raters: tuple[str, ...] = ()
    """Raters of imported judgments (the import's ``annotator``, stored as ``external_annotator``) whose
    judgments count. With ``annotators`` too, both count; with ``raters`` alone, only those raters'."""
    source_tags: tuple[str, ...] = ()
    """Comparison (else prompt) source tags to include; empty means all."""
    include_ties: bool = False
    """Export comparisons whose majority is ``tie`` (adds ``is_tie``)."""
    include_both_bad: bool = False
    """Export comparisons whose majority is ``both_bad`` (adds ``is_both_bad``)."""
    exclude_gold: bool = False
    """Drop gold comparisons."""
    min_agreement: float = 0.0
    """Drop comparisons where majority votes / all votes is below this."""
    min_votes: int = 1
    """Drop comparisons with fewer counted votes than this (a single vote has agreement 1.0)."""
    include_imported: bool = True
    """Count imported judgments (``source == imported``) as votes / rows."""

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (for the audit log)."""
        return {
            "since": _iso(self.since), "until": _iso(self.until),
            "annotators": list(self.annotators), "raters": list(self.raters), "source_tags": list(self.source_tags),
            "include_ties": self.include_ties, "include_both_bad": self.include_both_bad,
            "exclude_gold": self.exclude_gold, "min_agreement": self.min_agreement, "min_votes": self.min_votes,
            "include_imported": self.include_imported,
        }


# --------------------------------------------------------------------------- helpers


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _iso(value: datetime | None) -> str | None:
    value = _utc(value)
    return value.isoformat() if value is not None else None


def _check_filters(filters: ExportFilter) -> None:
    if not 0.0 <= filters.min_agreement <= 1.0:
        raise PrefloopError("minimum agreement must be between 0 and 1")
    if isinstance(filters.min_votes, bool) or not isinstance(filters.min_votes, int) or filters.min_votes < 1:
        raise PrefloopError("minimum votes must be a whole number, at least 1")
    if filters.since and filters.until and _utc(filters.since) >= _utc(filters.until):
        raise PrefloopError("the start date must be before the end date")
    if any(isinstance(names, str) for names in (filters.annotators, filters.raters, filters.source_tags)):
        raise PrefloopError("annotators, raters and source tags must be lists of names, not one string")
    for what, names in (("annotator", filters.annotators), ("rater", filters.raters)):
        if any(not str(name).strip() for name in names):
            raise PrefloopError(f"a name in the {what} filter is blank")  # it chose nobody: an empty export
    if filters.raters and not filters.include_imported:
        raise PrefloopError("the rater filter chooses imported judgments, which 'count imported judgments' "
                            "being off leaves out: turn it on, or choose no rater")


def _annotator_ids(session: Session, usernames: Sequence[str]) -> list[int]:
    wanted = sorted({u.strip() for u in usernames if u.strip()})
    found = dict(session.execute(select(User.username, User.id).where(User.username.in_(wanted))).all())
    missing = [u for u in wanted if u not in found]
    if missing:
        message = f"no user named {', '.join(map(repr, missing))}; check the annotator filter"
        raters = session.scalars(select(Judgment.external_annotator).distinct().where(
            Judgment.annotator_id.is_(None), Judgment.external_annotator.in_(missing))).all()
        if raters:
            names = ", ".join(map(repr, sorted(raters)))
            message += (f" ({names} {'names a rater' if len(raters) == 1 else 'name raters'} of imported judgments: "
                        "imported raters are not accounts: filter them as raters, with --rater or the Export page's "
                        "Imported raters)")
        raise NotFound(message)
    return list(found.values())


def _rater_names(session: Session, raters: Sequence[str]) -> list[str]:
    """The raters of imported judgments named (stored names: the import strips surrounding spaces)."""
    wanted = sorted({r.strip() for r in raters if r.strip()})
    found = set(session.scalars(select(Judgment.external_annotator).distinct().where(
        Judgment.source == JudgmentSource.imported, Judgment.external_annotator.in_(wanted))).all())
    missing = [r for r in wanted if r not in found]
    if missing:
        message = f"no imported judgment names the rater {', '.join(map(repr, missing))}; check the rater filter"
        users = session.scalars(select(User.username).where(User.username.in_(missing))).all()
        if users:
            message += (f" ({', '.join(map(repr, sorted(users)))} {'is an account' if len(users) == 1 else 'are accounts'}"
                        ": filter accounts as annotators, with --annotator or the Export page's Annotators)")
        raise NotFound(message)
    return wanted


def imported_raters(session: Session) -> list[str]:
    """The raters that imported judgments name, sorted (for the rater filter's choices)."""
    return list(session.scalars(select(Judgment.external_annotator).distinct().where(
        Judgment.source == JudgmentSource.imported, Judgment.external_annotator.is_not(None))
        .order_by(Judgment.external_annotator)).all())


def _apply_filters(stmt: Select, session: Session, filters: ExportFilter) -> Select:
    """Add the judgment and comparison filters to a statement joining Judgment, Comparison, Prompt."""
    if filters.since is not None:
        stmt = stmt.where(Judgment.created_at >= _utc(filters.since))
    if filters.until is not None:
        stmt = stmt.where(Judgment.created_at < _utc(filters.until))
    chosen = []  # whose judgments count, when some are named
    if filters.annotators:
        chosen.append(Judgment.annotator_id.in_(_annotator_ids(session, filters.annotators)))
    if filters.raters:
        chosen.append(and_(Judgment.source == JudgmentSource.imported,
                           Judgment.external_annotator.in_(_rater_names(session, filters.raters))))
    if chosen:
        stmt = stmt.where(or_(*chosen))
    if not filters.include_imported:
        stmt = stmt.where(Judgment.source != JudgmentSource.imported)
    if filters.source_tags:
        tag = func.coalesce(Comparison.source_tag, Prompt.source_tag)
        stmt = stmt.where(tag.in_(list(filters.source_tags)))
    if filters.exclude_gold:
        stmt = stmt.where(Comparison.is_gold.is_(False))
    return stmt


def _run(session: Session, stmt: Select):
    """Execute a column-only select at the Core level.

    The rows are plain tuples, so skipping the ORM's row loading roughly
    halves the Python time per row on large exports. Flushing first keeps the
    ORM's read-your-writes behaviour for objects added in this session.
    """
    session.flush()
    return session.connection().execute(stmt)


def _messages(messages: Iterable[Any]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        content = m.get("content", "") if isinstance(m, dict) else m
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        out.append({"role": str(m.get("role", "user")) if isinstance(m, dict) else "user",
                    "content": content})
    return out


# --------------------------------------------------------------------------- preferences

_ROW_CHUNK = 256
"""Exported comparisons whose texts are in memory at once (a file export streams in slices this big)."""
_WINNERS = (Choice.a, Choice.b, Choice.tie, Choice.both_bad)


@dataclass
class _Selection:
    """The comparisons an export writes, in id order, with their verdicts (compact: no texts)."""

    ids: array
    winners: array        # index into _WINNERS
    totals: array
    agreements: array
    strengths: array      # mean strength of the winning votes, 0 when none gave one
    conversational: bool  # some selected prompt is a chat: every row is conversational
    counts: dict[str, int]

    def __len__(self) -> int:
        return len(self.ids)


def _current_votes(stmt: Select, until: datetime | None) -> Select:
    """Keep the judgments that were votes just before ``until`` (now when None).

    Without ``until`` that is the active rows. With it, a row created before
    ``until`` (the caller's filter) still counts unless it stopped being current
    before ``until`` (``until`` is exclusive: a row replaced exactly then counts): a retracted row at its ``retracted_at``, a replaced
    row when the row naming it in ``supersedes_id`` was created (a revision, or
    judging again after an undo, whose retracted row already has ``retracted_at``).
    A non-active row with neither time is left out: when it stopped is unknown.
    """
    if until is None:
        return stmt.where(Judgment.state == JudgmentState.active)
    newer = aliased(Judgment)
    replaced = (
        select(newer.supersedes_id.label("judgment_id"), func.min(newer.created_at).label("at"))
        .where(newer.supersedes_id.is_not(None))
        .group_by(newer.supersedes_id)
        .subquery("replaced")
    )
    stopped_at = func.coalesce(Judgment.retracted_at, replaced.c.at, type_=Judgment.retracted_at.type)
    return (stmt.outerjoin(replaced, replaced.c.judgment_id == Judgment.id)
            .where(or_(Judgment.state == JudgmentState.active, stopped_at >= until)))


def _select(session: Session, filters: ExportFilter) -> _Selection:
    """Count each comparison's votes and apply the aggregation rule, streaming the votes in comparison order."""
    _check_filters(filters)
    stmt = (
        select(Judgment.comparison_id, Judgment.choice, Judgment.strength, Prompt.text.is_(None),
               Comparison.status == ComparisonStatus.retired)
        .join(Comparison, Comparison.id == Judgment.comparison_id)
        .join(Prompt, Prompt.id == Comparison.prompt_id)
        .where(Judgment.is_probe.is_(False))
        .order_by(Judgment.comparison_id)
    )
    stmt = _current_votes(_apply_filters(stmt, session, filters), _utc(filters.until))
    sel = _Selection(array("q"), array("b"), array("q"), array("d"), array("d"), False,
                     {"comparisons_with_votes": 0, "votes": 0, "exported": 0, "excluded_split": 0,
                      "excluded_tie": 0, "excluded_both_bad": 0, "excluded_low_agreement": 0,
                      "excluded_few_votes": 0, "excluded_retired": 0})
    counts = sel.counts

    def close(comparison_id: int, votes: dict[Choice, int], strengths: dict[Choice, list[int]],
              is_chat: bool) -> None:
        total = sum(votes.values())
        counts["comparisons_with_votes"] += 1
        counts["votes"] += total
        if total < filters.min_votes:
            counts["excluded_few_votes"] += 1
            return
        winner = majority(votes)
        if winner is None:
            counts["excluded_split"] += 1
            return
        if winner is Choice.tie and not filters.include_ties:
            counts["excluded_tie"] += 1
            return
        if winner is Choice.both_bad and not filters.include_both_bad:
            counts["excluded_both_bad"] += 1
            return
        agreement = votes[winner] / total
        if agreement < filters.min_agreement:
            counts["excluded_low_agreement"] += 1
            return
        won = strengths.get(winner, []) if winner in (Choice.a, Choice.b) else []
        sel.ids.append(comparison_id)
        sel.winners.append(_WINNERS.index(winner))
        sel.totals.append(total)
        sel.agreements.append(agreement)
        sel.strengths.append(float(sum(won) / len(won)) if won else 0.0)
        sel.conversational = sel.conversational or is_chat

    current, votes, strengths, current_chat, passed = None, {}, {}, False, None
    for comparison_id, choice, strength, is_chat, retired in _run(session, stmt.execution_options(yield_per=5000)):
        if retired:  # an admin took the pair out of the campaign (dashboard.retire)
            if comparison_id != passed:
                counts["excluded_retired"] += 1
                passed = comparison_id
            continue
        if comparison_id != current:
            if current is not None:
                close(current, votes, strengths, current_chat)
            current, votes, strengths, current_chat = comparison_id, {}, {}, bool(is_chat)
        choice = Choice(choice)
        votes[choice] = votes.get(choice, 0) + 1
        if strength is not None:
            strengths.setdefault(choice, []).append(int(strength))
    if current is not None:
        close(current, votes, strengths, current_chat)
    counts["exported"] = len(sel)
    return sel


def _iter_preference_rows(session: Session, sel: _Selection, filters: ExportFilter,
                          margin: bool) -> Iterator[list[dict[str, Any]]]:
    """The selected comparisons' rows in id order, in lists of at most ``_ROW_CHUNK``."""
    ResponseA, ResponseB = aliased(Response), aliased(Response)
    for start in range(0, len(sel), _ROW_CHUNK):
        chunk = sel.ids[start:start + _ROW_CHUNK]
        stmt = (
            select(Comparison.id, Comparison.prompt_id,
                   func.coalesce(Comparison.source_tag, Prompt.source_tag),
                   Prompt.text, Prompt.messages, ResponseA.text, ResponseB.text,
                   Comparison.external_id, Prompt.external_id, ResponseA.external_id,
                   ResponseB.external_id, ResponseA.meta, ResponseB.meta)
            .join(Prompt, Prompt.id == Comparison.prompt_id)
            .join(ResponseA, ResponseA.id == Comparison.response_a_id)
            .join(ResponseB, ResponseB.id == Comparison.response_b_id)
            .where(Comparison.id.in_(chunk.tolist()))
        )
        content = {r[0]: r for r in _run(session, stmt).all()}
        rows = []
        for i, comparison_id in enumerate(chunk, start):
            (_, prompt_id, source_tag, prompt_text, messages, text_a, text_b,
             external_id, prompt_external_id, ext_a, ext_b, meta_a, meta_b) = content[comparison_id]
            winner = _WINNERS[sel.winners[i]]
            chosen, rejected = (text_b, text_a) if winner is Choice.b else (text_a, text_b)
            chosen_ext, rejected_ext = (ext_b, ext_a) if winner is Choice.b else (ext_a, ext_b)
            chosen_meta, rejected_meta = (meta_b, meta_a) if winner is Choice.b else (meta_a, meta_b)
            if sel.conversational:
                prompt: Any = (_messages(messages) if messages is not None
                               else [{"role": "user", "content": prompt_text}])
                chosen = _response_messages(chosen, chosen_meta)
                rejected = _response_messages(rejected, rejected_meta)
            else:
                prompt = prompt_text
            row: dict[str, Any] = {
                "prompt": prompt, "chosen": chosen, "rejected": rejected,
                "comparison_id": comparison_id, "prompt_id": prompt_id,
                "n_judgments": sel.totals[i], "agreement": sel.agreements[i], "source_tag": source_tag,
                "external_id": external_id, "prompt_external_id": prompt_external_id,
                "chosen_external_id": chosen_ext, "rejected_external_id": rejected_ext,
            }
            if margin:
                row["margin"] = sel.strengths[i]
            if filters.include_ties:
                row["is_tie"] = winner is Choice.tie
            if filters.include_both_bad:
                row["is_both_bad"] = winner is Choice.both_bad
            rows.append(row)
        yield rows
        # Let this slice's texts go before the next one is read (callers drop theirs too).
        del rows, content


def _response_messages(text: str, meta: Any) -> list[dict[str, str]]:
    """A response as conversational messages: those it was imported as (see :func:`ingest.render_messages`),
    else one assistant message. Stored messages are used only while they still render to the text."""
    stored = meta.get(RESPONSE_MESSAGES) if isinstance(meta, dict) else None
    if isinstance(stored, list) and stored and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in stored):
        messages = [{"role": m["role"], "content": m["content"]} for m in stored]
        if render_messages(messages) == text:
            return messages
    return [{"role": "assistant", "content": text}]


def _preference_schema(conversational: bool, filters: ExportFilter, margin: bool):
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    text_type = pa.list_(message) if conversational else pa.string()
    fields = [
        ("prompt", text_type), ("chosen", text_type), ("rejected", text_type),
        ("comparison_id", pa.int64()), ("prompt_id", pa.int64()), ("n_judgments", pa.int64()),
        ("agreement", pa.float64()), ("source_tag", pa.string()),
        ("external_id", pa.string()), ("prompt_external_id", pa.string()),
        ("chosen_external_id", pa.string()), ("rejected_external_id", pa.string()),
    ]
    if margin:
        fields.append(("margin", pa.float64()))
    if filters.include_ties:
        fields.append(("is_tie", pa.bool_()))
    if filters.include_both_bad:
        fields.append(("is_both_bad", pa.bool_()))
    return pa.schema(fields)


_OPTIONAL_TEXT_COLUMNS = ("source_tag", "external_id", "prompt_external_id", "chosen_external_id",
                          "rejected_external_id")
"""Preference columns that may be missing: null in Parquet and ``datasets``, ``""`` in JSONL."""


def _write_jsonl(batches: Iterable[list[dict[str, Any]]], out) -> None:
    # ``datasets`` types a JSON column from the first block it reads (10 MB): an
    # id that is null throughout that block and given later would fail to load,
    # so a missing id or tag is written as "" (never null) in JSONL.
    for rows in batches:
        for row in rows:
            for key in _OPTIONAL_TEXT_COLUMNS:
                if row[key] is None:
                    row[key] = ""
            out.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        del rows


def _write_parquet(batches: Iterable[list[dict[str, Any]]], schema, out) -> None:
    """One row group per batch, so neither writer nor reader needs the whole table in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetWriter(out, schema) as writer:
        wrote = False
        for rows in batches:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            wrote = True
            del rows
        if not wrote:
            writer.write_table(schema.empty_table())


def _audit_preferences(session: Session, actor: Actor, sel: _Selection, filters: ExportFilter,
                       margin: bool, format: str, **extra) -> None:
    audit(session, actor, "export", kind="preferences", format=format, margin=margin,
          filters=filters.describe(), counts=dict(sel.counts), **extra)


def preference_rows(session: Session, *, actor: Actor, filters: ExportFilter = ExportFilter(),
                    margin: bool = False) -> list[dict[str, Any]]:
    """Aggregate active judgments into TRL preference rows (``prompt``/``chosen``/``rejected``).

    Rows are ordered by comparison id; the aggregation rule and the columns are
    described in the module docstring. Admin only; audited.
    """
    require_admin(session, actor)
    sel = _select(session, filters)
    rows = [row for batch in _iter_preference_rows(session, sel, filters, margin) for row in batch]
    _audit_preferences(session, actor, sel, filters, margin, "rows")
    return rows


def _preferences_bytes(session: Session, format: str, filters: ExportFilter,
                       margin: bool) -> tuple[bytes, _Selection]:
    if format not in ("jsonl", "parquet"):
        raise PrefloopError(f"unknown preference download format {format!r}: use jsonl or parquet")
    sel = _select(session, filters)
    buffer = io.BytesIO()
    batches = _iter_preference_rows(session, sel, filters, margin)
    if format == "jsonl":
        _write_jsonl(batches, buffer)
    else:
        _write_parquet(batches, _preference_schema(sel.conversational, filters, margin), buffer)
    return buffer.getvalue(), sel


def preferences_bytes(session: Session, *, actor: Actor, format: Literal["jsonl", "parquet"],
                      filters: ExportFilter = ExportFilter(), margin: bool = False) -> bytes:
    """The preference export as file contents. Admin only; audited.

    The whole file is in memory: for ``st.download_button`` use :func:`download`, which also
    reads from one snapshot without holding SQLite's write lock.
    """
    require_admin(session, actor)
    data, sel = _preferences_bytes(session, format, filters, margin)
    _audit_preferences(session, actor, sel, filters, margin, format)
    return data


def write_preferences(session: Session, path: str | os.PathLike, *, actor: Actor,
                      format: Literal["jsonl", "parquet", "datasets"],
                      filters: ExportFilter = ExportFilter(), margin: bool = False) -> int:
    """Write the preference export to ``path`` and return the number of rows.

    ``jsonl``: one JSON object per line (UTF-8); ``parquet``: one Parquet file
    (a row group per slice of rows); ``datasets``: a Hugging Face
    ``Dataset.save_to_disk`` directory (load it with ``datasets.load_from_disk``).
    Rows are streamed from the database in slices, so memory does not grow
    with the export. The file or directory is written under a temporary name
    next to ``path`` and renamed into place, so readers never see half an
    export. Admin only; audited.
    """
    require_admin(session, actor)
    target = _preferences_target(path, format)
    sel = _write_preferences(session, target, format, filters, margin)
    _audit_preferences(session, actor, sel, filters, margin, format, path=str(target))
    return len(sel)


def _preferences_target(path: str | os.PathLike, format: str) -> Path:
    if format not in ("jsonl", "parquet", "datasets"):
        raise PrefloopError(f"unknown preference export format {format!r}: use jsonl, parquet or datasets")
    # Absolute and normalised, so '.' or 'out/..' name the folder itself (they have no usable name).
    target = Path(os.path.abspath(path))
    _check_target(target, folder=format == "datasets")
    return target


def _write_preferences(session: Session, target: Path, format: str, filters: ExportFilter,
                       margin: bool) -> _Selection:
    sel = _select(session, filters)
    batches = _iter_preference_rows(session, sel, filters, margin)
    schema = _preference_schema(sel.conversational, filters, margin)
    if format == "jsonl":
        _write_file_atomic(target, lambda out: _write_jsonl(batches, out))
    elif format == "parquet":
        _write_file_atomic(target, lambda out: _write_parquet(batches, schema, out))
    else:
        _write_dataset_atomic(target, batches, schema)
    return sel


# --------------------------------------------------------------------------- raw judgments


def _choice_shown(choice: Choice, a_on_left: bool | None) -> str | None:
    if choice in (Choice.tie, Choice.both_bad):
        return choice.value
    if a_on_left is None:
        return None
    return "left" if (choice is Choice.a) == a_on_left else "right"


_JUDGMENT_COLUMNS = (
    Judgment.id, Judgment.comparison_id, Judgment.source, Judgment.choice, Judgment.strength,
    Judgment.rationale, Judgment.flags, Judgment.a_on_left, Judgment.time_spent_ms,
    Judgment.is_probe, Judgment.was_gold, Judgment.state, Judgment.supersedes_id,
    Judgment.retracted_at, Judgment.model_version_id, Judgment.acquisition_strategy,
    Judgment.acquisition_score, Judgment.created_at, Judgment.external_annotator,
)


def _iter_judgments(session: Session, filters: ExportFilter) -> Iterator[dict[str, Any]]:
    _check_filters(filters)
    ResponseA, ResponseB = aliased(Response), aliased(Response)
    stmt = (
        select(*_JUDGMENT_COLUMNS, User.username, Comparison.prompt_id, Comparison.response_a_id,
               Comparison.response_b_id, Comparison.is_gold, Comparison.status,
               func.coalesce(Comparison.source_tag, Prompt.source_tag),
               Comparison.external_id, Prompt.external_id, ResponseA.external_id,
               ResponseB.external_id, Prompt.text, Prompt.messages, ResponseA.text, ResponseB.text)
        .join(Comparison, Comparison.id == Judgment.comparison_id)
        .join(Prompt, Prompt.id == Comparison.prompt_id)
        .join(ResponseA, ResponseA.id == Comparison.response_a_id)
        .join(ResponseB, ResponseB.id == Comparison.response_b_id)
        .outerjoin(User, User.id == Judgment.annotator_id)
        .order_by(Judgment.id)
    )
    stmt = _apply_filters(stmt, session, filters)
    # Streamed in batches (a server-side cursor on PostgreSQL) so a large
    # export never holds every row twice.
    for (jid, comparison_id, source, choice, strength, rationale, flags, a_on_left,
         time_spent_ms, is_probe, was_gold, state, supersedes_id, retracted_at,
         model_version_id, acquisition_strategy, acquisition_score, created_at, external_annotator,
         username, prompt_id, a_id, b_id, is_gold, comparison_status, source_tag,
         external_id, prompt_external_id, ext_a, ext_b,
         prompt_text, messages, text_a, text_b) in _run(
            session, stmt.execution_options(yield_per=2000)):
        choice = Choice(choice)
        yield {
            "judgment_id": jid, "comparison_id": comparison_id, "prompt_id": prompt_id,
            "response_a_id": a_id, "response_b_id": b_id, "annotator": username,
            "external_annotator": external_annotator, "source": JudgmentSource(source).value, "choice": choice.value,
            "choice_shown": _choice_shown(choice, a_on_left), "strength": strength,
            "rationale": rationale, "flags": list(flags or []), "a_on_left": a_on_left,
            "time_spent_ms": time_spent_ms, "is_probe": bool(is_probe),
            "was_gold": bool(was_gold), "is_gold": bool(is_gold),
            "state": JudgmentState(state).value, "supersedes_id": supersedes_id,
            "retracted_at": _iso(retracted_at), "model_version_id": model_version_id,
            "acquisition_strategy": acquisition_strategy,
            "acquisition_score": acquisition_score, "created_at": _iso(created_at),
            "source_tag": source_tag, "external_id": external_id,
            "prompt_external_id": prompt_external_id, "response_a_external_id": ext_a,
            "response_b_external_id": ext_b,
            "prompt": (json.dumps(messages, ensure_ascii=False) if messages is not None
                       else prompt_text),
            "response_a": text_a, "response_b": text_b,
            "comparison_status": ComparisonStatus(comparison_status).value,
        }


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, dict)):
        value = json.dumps(value, ensure_ascii=False)
    value = str(value)
    if value.startswith(CSV_GUARDED):
        return "'" + value
    return value


def _write_judgments_csv(rows: Iterable[dict[str, Any]], out: io.TextIOBase) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(JUDGMENT_FIELDS)
    n = 0
    for row in rows:
        writer.writerow([_csv_cell(row[k]) for k in JUDGMENT_FIELDS])
        n += 1
    return n


def _write_judgments_jsonl(rows: Iterable[dict[str, Any]], out: io.TextIOBase) -> int:
    n = 0
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
    return n


def _judgment_schema():
    import pyarrow as pa

    types = {
        "annotator": pa.string(), "external_annotator": pa.string(), "source": pa.string(), "choice": pa.string(), "choice_shown": pa.string(),
        "rationale": pa.string(), "flags": pa.list_(pa.string()), "a_on_left": pa.bool_(),
        "is_probe": pa.bool_(), "was_gold": pa.bool_(), "is_gold": pa.bool_(), "comparison_status": pa.string(), "state": pa.string(),
        "retracted_at": pa.string(), "acquisition_strategy": pa.string(), "acquisition_score": pa.float64(),
        "created_at": pa.string(), "source_tag": pa.string(), "external_id": pa.string(),
        "prompt_external_id": pa.string(), "response_a_external_id": pa.string(),
        "response_b_external_id": pa.string(), "prompt": pa.string(), "response_a": pa.string(),
        "response_b": pa.string(),
    }  # every other column is an integer id, count or duration
    return pa.schema([(name, types.get(name, pa.int64())) for name in JUDGMENT_FIELDS])


def _write_judgments_parquet(rows: Iterable[dict[str, Any]], out) -> int:
    """Typed columns (nulls keep their column's type), one row group per 2,000 judgments."""
    n = 0

    def batches() -> Iterator[list[dict[str, Any]]]:
        nonlocal n
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == 2000:
                n += len(batch)
                yield batch
                batch = []
        if batch:
            n += len(batch)
            yield batch

    _write_parquet(batches(), _judgment_schema(), out)
    return n


def judgment_rows(session: Session, *, actor: Actor,
                  filters: ExportFilter = ExportFilter()) -> list[dict[str, Any]]:
    """Every judgment matching ``filters`` with all its fields (see :data:`JUDGMENT_FIELDS`).

    All states are included (superseded/retracted rows flagged by ``state``), probes too.
    Admin only; audited.
    """
    require_admin(session, actor)
    rows = list(_iter_judgments(session, filters))
    audit(session, actor, "export", kind="judgments", format="rows",
          filters=filters.describe(), counts={"rows": len(rows)})
    return rows


def _judgments_writer(format: str):
    """``(write(rows, out) -> count, binary)`` for a judgment export format."""
    if format == "csv":
        return _write_judgments_csv, False
    if format == "jsonl":
        return _write_judgments_jsonl, False
    if format == "parquet":
        return _write_judgments_parquet, True
    raise PrefloopError(f"unknown judgment export format {format!r}: use jsonl, csv or parquet")


def _write_judgments_to(session: Session, format: str, filters: ExportFilter, out) -> int:
    """Stream the raw judgment export into the binary file ``out``; the number of rows."""
    writer, binary = _judgments_writer(format)
    if binary:
        return writer(_iter_judgments(session, filters), out)
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    n = writer(_iter_judgments(session, filters), text)
    text.flush()
    text.detach()
    return n


def _judgments_bytes(session: Session, format: str, filters: ExportFilter) -> tuple[bytes, int]:
    # Encoded as it is written: a StringIO copied out and then encoded held the file three times over.
    buffer = io.BytesIO()
    n = _write_judgments_to(session, format, filters, buffer)
    return buffer.getvalue(), n


def _audit_judgments(session: Session, actor: Actor, n: int, filters: ExportFilter, format: str,
                     **extra) -> None:
    audit(session, actor, "export", kind="judgments", format=format, **extra,
          filters=filters.describe(), counts={"rows": n})


def judgments_bytes(session: Session, *, actor: Actor, format: Literal["jsonl", "csv", "parquet"],
                    filters: ExportFilter = ExportFilter()) -> bytes:
    """The raw judgment export as UTF-8 file contents. Admin only; audited.

    The whole file is in memory: for ``st.download_button`` use :func:`download`, which also
    reads from one snapshot without holding SQLite's write lock.
    """
    require_admin(session, actor)
    data, n = _judgments_bytes(session, format, filters)
    _audit_judgments(session, actor, n, filters, format)
    return data


def write_judgments(session: Session, path: str | os.PathLike, *, actor: Actor,
                    format: Literal["jsonl", "csv", "parquet"], filters: ExportFilter = ExportFilter()) -> int:
    """Write the raw judgment export to ``path`` (atomically) and return the number of rows.

    Rows are streamed from the database, so memory stays flat for large exports.
    Admin only; audited.
    """
    require_admin(session, actor)
    target = _judgments_target(path, format)
    n = _write_judgments(session, target, format, filters)
    _audit_judgments(session, actor, n, filters, format, path=str(target))
    return n


def _judgments_target(path: str | os.PathLike, format: str) -> Path:
    _judgments_writer(format)
    target = Path(os.path.abspath(path))
    _check_target(target, folder=False)
    return target


def _write_judgments(session: Session, target: Path, format: str, filters: ExportFilter) -> int:
    n = 0

    def write(out) -> None:
        nonlocal n
        n = _write_judgments_to(session, format, filters, out)

    _write_file_atomic(target, write)
    return n


# --------------------------------------------------------------------------- from a Database


Kind = Literal["preferences", "judgments"]


@contextmanager
def snapshot(db: Database) -> Iterator[Session]:
    """A read unit of work that sees one snapshot of the database, from its first query to its end.

    SQLite: a deferred transaction, which in WAL mode reads one snapshot and takes no write
    lock, so annotators keep judging while a long export runs (a write unit of work begins
    ``BEGIN IMMEDIATE`` and held the lock for the whole export: a minute or more for a million
    judgments, past the 30 s every writer waits). PostgreSQL: ``REPEATABLE READ``, so the
    export's statements (the votes, then the texts in slices) all see the same commits.
    """
    with db.read() as session:
        if db.dialect == "postgresql":
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        yield session


def _check_kind(kind: str) -> None:
    if kind not in ("preferences", "judgments"):
        raise PrefloopError(f"unknown export kind {kind!r}: use preferences or judgments")


def save(db: Database, path: str | os.PathLike, *, actor: Actor, kind: Kind, format: str,
         filters: ExportFilter = ExportFilter(), margin: bool = False) -> int:
    """:func:`write_preferences` or :func:`write_judgments` (``kind``), read from one :func:`snapshot`.

    The file is written from a read unit of work, so a long export neither blocks writers
    nor sees a commit made while it runs; the audit event is then recorded in its own
    short write unit of work. Returns the number of rows. Admin only; audited.
    """
    _check_kind(kind)
    with snapshot(db) as session:
        require_admin(session, actor)
        if kind == "preferences":
            target = _preferences_target(path, format)
            sel = _write_preferences(session, target, format, filters, margin)
        else:
            target = _judgments_target(path, format)
            n = _write_judgments(session, target, format, filters)
    with db.begin() as session:
        if kind == "preferences":
            _audit_preferences(session, actor, sel, filters, margin, format, path=str(target))
            return len(sel)
        _audit_judgments(session, actor, n, filters, format, path=str(target))
        return n


DATASETS_JSON_BLOCK = 10 << 20
"""The bytes of a JSON Lines file ``datasets.load_dataset("json")`` reads before it fixes each column's type
(its ``JsonConfig.chunksize``): a column null in every row of that block and set later does not load."""


def untyped_json_columns(path: str | os.PathLike, block: int | None = None) -> list[str]:
    """The columns of the JSON Lines file at ``path`` that are null in every row starting in its first
    ``block`` bytes and set in a later row: what ``datasets``' JSON loader cannot load (see the module
    docstring). Nothing for a file of one block."""
    block = DATASETS_JSON_BLOCK if block is None else block
    if os.path.getsize(path) <= block:
        return []
    seen: set[str] = set()
    keys: list[str] = []
    late: set[str] = set()
    offset = 0
    with open(path, "rb") as fh:
        for line in fh:
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            row = json.loads(line)
            if start < block:
                keys.extend(k for k in row if k not in keys)
                seen.update(k for k, v in row.items() if v is not None)
            else:
                late.update(k for k, v in row.items() if v is not None and k not in seen)
                if len(late) + len(seen) >= len(keys):
                    break
    return [k for k in keys if k in late]


def download(db: Database, *, actor: Actor, kind: Kind, format: str,
             filters: ExportFilter = ExportFilter(), margin: bool = False) -> bytes:
    """:func:`preferences_bytes` or :func:`judgments_bytes` (``kind``), read from one :func:`snapshot`.

    For ``st.download_button``, which needs the whole file in memory; the audit event is
    recorded in its own short write unit of work after the file is built. Admin only; audited.
    """
    _check_kind(kind)
    with snapshot(db) as session:
        require_admin(session, actor)
        if kind == "preferences":
            data, sel = _preferences_bytes(session, format, filters, margin)
        else:
            data, n = _judgments_bytes(session, format, filters)
    with db.begin() as session:
        if kind == "preferences":
            _audit_preferences(session, actor, sel, filters, margin, format)
        else:
            _audit_judgments(session, actor, n, filters, format)
    return data


# --------------------------------------------------------------------------- atomic writes


def _check_parent(target: Path) -> None:
    if target.parent.is_dir():
        return
    if target.parent.exists():
        raise PrefloopError(f"{str(target.parent)!r} is a file, not a folder: pick another path")
    raise PrefloopError(f"folder {str(target.parent)!r} does not exist: create it or pick another path")


def _check_target(target: Path, *, folder: bool) -> None:
    """Refuse, before any work, a path the export cannot (or must not) replace."""
    _check_parent(target)
    if not folder and target.is_dir():
        raise PrefloopError(f"{str(target)!r} is a folder: give a file name")
    if folder and target.exists() and not target.is_dir():
        raise PrefloopError(f"{str(target)!r} is a file: a datasets export needs a folder path")
    if folder and target.is_dir() and not _replaceable_dataset_dir(target):
        # Replacing the folder deletes it: only an earlier export (or an empty folder) may go.
        raise PrefloopError(f"{str(target)!r} is a folder that is not a datasets export: "
                            "give a new folder path (it is created) or remove that folder first")


def _temp_sibling(target: Path) -> Path:
    _check_parent(target)
    return target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")


def _temporaries(target: Path) -> list[Path]:
    """This target's leftovers from killed exports: ``.NAME.tmp-*``, ``.NAME.old-*``, ``.NAME.rows-*.arrow``.

    Only names this module makes (eight hex digits after the target's own name) match, so a
    neighbour's temporaries or a user's own dot-files are never taken for this target's.
    """
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:(?:tmp|old)-[0-9a-f]{{8}}|rows-[0-9a-f]{{8}}\.arrow)")
    return sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name))


@contextmanager
def _writing(target: Path) -> Iterator[None]:
    """Hold the folder's shared export lock while writing next to ``target``; then clear stale temporaries.

    A SIGKILL (or a power cut) mid-export leaves the hidden temporaries behind; nothing else ever
    removes them. Every export holds a shared ``flock`` on the target's folder from before it creates
    a temporary until its own are renamed or removed, so whoever gets the lock exclusively knows no
    export is writing there and that the temporaries it finds are dead. A finished export tries for
    that exclusive lock without waiting and, if it gets it, removes its target's leftovers; when
    another export is writing in the folder it leaves them for a later run. Exports never wait for
    one another. Where the folder cannot be locked (no ``fcntl``, or a filesystem without ``flock``)
    nothing is removed. Cleaning after the new file is in place, not before, means a failed export
    never deletes the only copy of an earlier one (a kill between the two renames of a ``datasets``
    export leaves the previous export as ``.NAME.old-*``).
    """
    fd = _lock_folder(target.parent)
    try:
        yield
        if fd is None:
            return
        import fcntl

        try:
            # Converting shared to exclusive may drop the lock first; our own writing is done by now.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return
        for leftover in _temporaries(target):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
    finally:
        if fd is not None:
            os.close(fd)


def _lock_folder(folder: Path) -> int | None:
    """An open descriptor holding a shared ``flock`` on ``folder``, or None where it cannot be locked."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return None
    return fd


def _write_file_atomic(target: Path, write: Callable[[Any], None]) -> None:
    """Run ``write(binary file)`` on a temporary sibling, fsync it and rename it to ``target``."""
    with _writing(target):
        tmp = _temp_sibling(target)
        try:
            with open(tmp, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _replaceable_dataset_dir(path: Path) -> bool:
    """Whether ``path`` is empty or holds only what ``Dataset.save_to_disk`` writes."""
    names = {p.name for p in path.iterdir()}
    if not names:
        return True
    saved = {"state.json", "dataset_info.json"}
    return saved <= names and all(
        n in saved or (n.startswith("data-") and n.endswith(".arrow")) for n in names)


def _write_dataset_atomic(target: Path, batches: Iterable[list[dict[str, Any]]], schema) -> None:
    """Stream the rows into an Arrow file, then ``save_to_disk`` it (memory-mapped) under a temporary name."""
    import pyarrow as pa
    from datasets import Dataset, Features
    from datasets.arrow_writer import ArrowWriter

    features = Features.from_arrow_schema(schema)
    with _writing(target):
        tmp = _temp_sibling(target)
        scratch = target.with_name(f".{target.name}.rows-{uuid.uuid4().hex[:8]}.arrow")
        try:
            with ArrowWriter(features=features, path=str(scratch)) as writer:
                for rows in batches:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    del rows
                writer.finalize()
            dataset = Dataset.from_file(str(scratch))
            # Zero shards cannot be loaded back: an empty export is one empty shard with the full schema.
            dataset.save_to_disk(str(tmp), num_shards=1 if len(dataset) == 0 else None)
            del dataset
            if target.exists():
                # A directory cannot be replaced in one rename: move the old one
                # aside first so a failure never leaves neither in place.
                old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            scratch.unlink(missing_ok=True)
