"""Exports: aggregation rule, filters, TRL rows, raw judgments, file formats, permissions.

Test data is built directly with the ORM (no importer), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import datetime, timedelta, timezone
from itertools import count

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow.parquet as pq
import pytest
from sqlalchemy import event, select

from annotate import export
from annotate.accounts import Actor, create_user
from annotate.db import Database, create_db_engine
from annotate.errors import NotFound, PermissionDenied, PrefloopError
from annotate.export import ExportFilter
from annotate.models import (
    AuditEvent,
    Choice,
    Comparison,
    Judgment,
    JudgmentSource,
    JudgmentState,
    Prompt,
    Response,
    Role,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def hf_offline(tmp_path, monkeypatch):
    """Keep ``datasets`` off the network and out of the home directory."""
    import datasets.config as hf_config

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_config, "HF_CACHE_HOME", str(home))
    monkeypatch.setattr(hf_config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(hf_config, "HF_MODULES_CACHE", home / "modules")
    monkeypatch.setattr(hf_config, "DOWNLOADED_DATASETS_PATH", home / "datasets" / "downloads")
    monkeypatch.setattr(hf_config, "EXTRACTED_DATASETS_PATH", home / "datasets" / "downloads" / "extracted")
    monkeypatch.setattr(hf_config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_config, "HF_DATASETS_OFFLINE", True)
    return home


@pytest.fixture
def out(tmp_path):
    """An empty folder for export files (the SQLite database lives in tmp_path)."""
    path = tmp_path / "out"
    path.mkdir()
    return path


# --------------------------------------------------------------------------- factory


class Factory:
    """Small ORM factory: users, prompts with two responses, judgments."""

    def __init__(self, session):
        self.session = session
        self._n = count(1)
        self.users: dict[str, object] = {}

    def user(self, name: str, role: str = "annotator"):
        if name not in self.users:
            self.users[name] = create_user(self.session, name, "password123", role, system=True)
        return self.users[name]

    def actor(self, name: str, role: str = "admin") -> Actor:
        u = self.user(name, role)
        return Actor(id=u.id, username=u.username, role=Role(role))

    def comparison(self, *, text: str | None = None, messages: list | None = None,
                   a: str | None = None, b: str | None = None, source_tag: str | None = None,
                   prompt_tag: str | None = None, is_gold: bool = False,
                   gold_choice: str | None = None) -> Comparison:
        n = next(self._n)
        if text is None and messages is None:
            text = f"prompt {n}"
        # Only the set field is passed: a JSON column turns an explicit None into JSON 'null'.
        content = {"text": text} if messages is None else {"messages": messages}
        prompt = Prompt(content_hash=f"p{n}", source_tag=prompt_tag, **content)
        ra = Response(prompt=prompt, content_hash=f"a{n}", text=a or f"answer A{n}")
        rb = Response(prompt=prompt, content_hash=f"b{n}", text=b or f"answer B{n}")
        comparison = Comparison(prompt=prompt, response_a=ra, response_b=rb, source_tag=source_tag,
                                is_gold=is_gold, gold_choice=Choice(gold_choice) if gold_choice else None,
                                overlap_target=3)
        self.session.add_all([prompt, ra, rb, comparison])
        self.session.flush()
        return comparison

    def judge(self, comparison: Comparison, annotator: str | None, choice: str, *,
              strength: int | None = None, state: str = "active", is_probe: bool = False,
              created_at: datetime = T0, source: str = "annotator", **extra) -> Judgment:
        judgment = Judgment(
            comparison_id=comparison.id,
            annotator_id=self.user(annotator).id if annotator else None,
            source=JudgmentSource(source), choice=Choice(choice), strength=strength,
            state=JudgmentState(state), is_probe=is_probe, created_at=created_at, **extra)
        self.session.add(judgment)
        self.session.flush()
        return judgment

    def votes(self, comparison: Comparison, *choices: str, prefix: str = "u") -> None:
        for i, choice in enumerate(choices):
            self.judge(comparison, f"{prefix}{i}", choice)


@pytest.fixture
def seeded(db):
    """A database plus a factory-backed helper; yields (db, admin actor, build callback)."""

    def build(fn):
        with db.begin() as session:
            f = Factory(session)
            admin = f.actor("boss", "admin")
            result = fn(f)
        return admin, result

    return build


def _rows(db, admin, **kw):
    filters = ExportFilter(**{k: v for k, v in kw.items() if k != "margin"})
    with db.begin() as session:
        return export.preference_rows(session, actor=admin, filters=filters,
                                      margin=kw.get("margin", False))


def _by_id(rows):
    return {r["comparison_id"]: r for r in rows}


# --------------------------------------------------------------------------- aggregation


def test_two_against_one_exports_majority(db, seeded):
    def data(f):
        c = f.comparison(text="Say hi", a="hi", b="hello there")
        f.votes(c, "b", "a", "b")
        return c.id

    admin, cid = seeded(data)
    rows = _rows(db, admin)
    assert len(rows) == 1
    row = rows[0]
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("Say hi", "hello there", "hi")
    assert row["comparison_id"] == cid
    assert row["n_judgments"] == 3
    assert row["agreement"] == pytest.approx(2 / 3)
    assert "margin" not in row and "is_tie" not in row and "is_both_bad" not in row


def test_split_votes_are_excluded(db, seeded):
    def data(f):
        even = f.comparison()
        f.votes(even, "a", "b")
        a_vs_tie = f.comparison()
        f.votes(a_vs_tie, "a", "tie")
        clear = f.comparison()
        f.votes(clear, "a", "a", "b")
        return clear.id

    admin, clear_id = seeded(data)
    rows = _rows(db, admin, include_ties=True, include_both_bad=True)
    assert [r["comparison_id"] for r in rows] == [clear_id]


def test_ties_and_both_bad_only_on_request(db, seeded):
    def data(f):
        tie = f.comparison(a="ta", b="tb")
        f.votes(tie, "tie", "tie", "a")
        bad = f.comparison(a="ba", b="bb")
        f.votes(bad, "both_bad", "both_bad")
        win = f.comparison(a="wa", b="wb")
        f.votes(win, "b")
        return tie.id, bad.id, win.id

    admin, (tie_id, bad_id, win_id) = seeded(data)
    assert [r["comparison_id"] for r in _rows(db, admin)] == [win_id]

    with_ties = _by_id(_rows(db, admin, include_ties=True))
    assert set(with_ties) == {tie_id, win_id}
    assert with_ties[tie_id]["is_tie"] is True and with_ties[win_id]["is_tie"] is False
    # Tie rows keep the canonical order.
    assert (with_ties[tie_id]["chosen"], with_ties[tie_id]["rejected"]) == ("ta", "tb")
    assert "is_both_bad" not in with_ties[tie_id]

    both = _by_id(_rows(db, admin, include_ties=True, include_both_bad=True))
    assert set(both) == {tie_id, bad_id, win_id}
    assert both[bad_id]["is_both_bad"] is True and both[bad_id]["is_tie"] is False
    assert (both[bad_id]["chosen"], both[bad_id]["rejected"]) == ("ba", "bb")
    assert both[win_id]["chosen"] == "wb" and both[win_id]["is_both_bad"] is False


def test_min_agreement(db, seeded):
    def data(f):
        weak = f.comparison()
        f.votes(weak, "a", "a", "b")
        strong = f.comparison()
        f.votes(strong, "b", "b", "b")
        return weak.id, strong.id

    admin, (weak, strong) = seeded(data)
    assert {r["comparison_id"] for r in _rows(db, admin, min_agreement=0.6)} == {weak, strong}
    assert [r["comparison_id"] for r in _rows(db, admin, min_agreement=0.9)] == [strong]
    assert _rows(db, admin, min_agreement=1.0)[0]["agreement"] == 1.0
    with db.begin() as session, pytest.raises(PrefloopError):
        export.preference_rows(session, actor=admin, filters=ExportFilter(min_agreement=1.5))


def test_superseded_and_retracted_votes_are_ignored(db, seeded):
    def data(f):
        c = f.comparison(a="x", b="y")
        old = f.judge(c, "ann", "a", state="superseded")
        f.judge(c, "ann", "b", supersedes_id=old.id)
        f.judge(c, "other", "a", state="retracted")
        f.judge(c, "third", "a", state="retracted")
        only_retracted = f.comparison()
        f.judge(only_retracted, "ann", "a", state="retracted")
        return c.id

    admin, cid = seeded(data)
    rows = _rows(db, admin)
    assert len(rows) == 1
    assert rows[0]["comparison_id"] == cid
    assert rows[0]["chosen"] == "y" and rows[0]["n_judgments"] == 1


def test_probes_are_ignored(db, seeded):
    def data(f):
        c = f.comparison(a="x", b="y")
        f.judge(c, "ann", "b")
        f.judge(c, "ann", "a", is_probe=True)
        f.judge(c, "other", "a", is_probe=True)
        return c.id

    admin, cid = seeded(data)
    rows = _rows(db, admin)
    assert [(r["comparison_id"], r["chosen"], r["n_judgments"]) for r in rows] == [(cid, "y", 1)]


def test_imported_votes_count_unless_excluded(db, seeded):
    def data(f):
        c = f.comparison(a="x", b="y")
        f.judge(c, None, "a", source="imported")
        f.judge(c, None, "a", source="imported")
        f.judge(c, "ann", "b")
        return c.id

    admin, cid = seeded(data)
    rows = _rows(db, admin)
    assert rows[0]["chosen"] == "x" and rows[0]["n_judgments"] == 3
    rows = _rows(db, admin, include_imported=False)
    assert rows[0]["chosen"] == "y" and rows[0]["n_judgments"] == 1


# --------------------------------------------------------------------------- filters


def test_date_range_filters_judgments(db, seeded):
    def data(f):
        c = f.comparison(a="x", b="y")
        f.judge(c, "early", "a", created_at=T0 - timedelta(days=2))
        f.judge(c, "mid1", "b", created_at=T0)
        f.judge(c, "mid2", "b", created_at=T0 + timedelta(hours=1))
        f.judge(c, "late", "a", created_at=T0 + timedelta(days=5))
        f.judge(c, "late2", "a", created_at=T0 + timedelta(days=6))
        return c.id

    admin, cid = seeded(data)
    everything = _rows(db, admin)
    assert everything[0]["chosen"] == "x" and everything[0]["n_judgments"] == 5
    window = _rows(db, admin, since=T0, until=T0 + timedelta(days=1))
    assert window[0]["chosen"] == "y" and window[0]["n_judgments"] == 2  # since is inclusive
    # A naive datetime is UTC; until is exclusive.
    naive = _rows(db, admin, since=T0.replace(tzinfo=None) - timedelta(days=3),
                  until=T0.replace(tzinfo=None))
    assert naive[0]["chosen"] == "x" and naive[0]["n_judgments"] == 1
    # Another time zone is the same instant.
    plus2 = timezone(timedelta(hours=2))
    shifted = _rows(db, admin, since=(T0 + timedelta(days=4)).astimezone(plus2))
    assert shifted[0]["n_judgments"] == 2
    assert _rows(db, admin, since=T0 + timedelta(days=10)) == []
    with db.begin() as session, pytest.raises(PrefloopError):
        export.preference_rows(session, actor=admin, filters=ExportFilter(since=T0, until=T0))


# --------------------------------------------------------------------------- until: the votes as they stood


def _chosen(db, admin, **kw):
    """(comparison_id, chosen, n_judgments) of each exported row."""
    return [(r["comparison_id"], r["chosen"], r["n_judgments"]) for r in _rows(db, admin, **kw)]


def test_until_exports_a_vote_revised_later_as_it_was(db, seeded):
    """A vote cast before ``until`` and revised after it counts with its old choice."""
    def data(f):
        c = f.comparison(a="x", b="y")
        old = f.judge(c, "ann", "a", state="superseded", created_at=T0)
        f.judge(c, "ann", "b", supersedes_id=old.id, created_at=T0 + timedelta(days=2))
        f.judge(c, "other", "a", created_at=T0 - timedelta(hours=1))
        return c.id

    admin, cid = seeded(data)
    assert _chosen(db, admin, until=T0 + timedelta(days=1)) == [(cid, "x", 2)]
    # Revised exactly at until: the revision is outside the window, so the old vote still stands.
    assert _chosen(db, admin, until=T0 + timedelta(days=2)) == [(cid, "x", 2)]
    # After the revision: the new vote (one each way, a split).
    assert _chosen(db, admin, until=T0 + timedelta(days=3), include_ties=True) == []
    assert _chosen(db, admin, until=T0 + timedelta(days=3), annotators=("ann",)) == [(cid, "y", 1)]
    assert _chosen(db, admin, until=T0 + timedelta(days=1), annotators=("ann",)) == [(cid, "x", 1)]
    # Before the vote was cast, only the other annotator's.
    assert _chosen(db, admin, until=T0) == [(cid, "x", 1)]


def test_until_counts_a_vote_retracted_later(db, seeded):
    def data(f):
        c = f.comparison(a="x", b="y")
        f.judge(c, "ann", "a", state="retracted", created_at=T0, retracted_at=T0 + timedelta(days=2))
        return c.id

    admin, cid = seeded(data)
    assert _chosen(db, admin, until=T0 + timedelta(days=1)) == [(cid, "x", 1)]
    assert _chosen(db, admin, until=T0 + timedelta(days=2)) == [(cid, "x", 1)]
    assert _chosen(db, admin, until=T0 + timedelta(days=3)) == []
    assert _chosen(db, admin) == []


def test_until_ignores_a_vote_retracted_before_it(db, seeded):
    def data(f):
        c = f.comparison(a="x", b="y")
        f.judge(c, "ann", "a", state="retracted", created_at=T0, retracted_at=T0 + timedelta(hours=1))
        f.judge(c, "other", "b", created_at=T0)
        return c.id

    admin, cid = seeded(data)
    assert _chosen(db, admin, until=T0 + timedelta(days=1)) == [(cid, "y", 1)]
    assert _chosen(db, admin, until=T0 + timedelta(minutes=30)) == []  # one each way: a split


def test_until_follows_undo_and_judging_again(db, seeded, settings):
    """Undo retracts the judgment; judging again inserts a row that supersedes the retracted one."""
    from annotate import judgments

    def data(f):
        c = f.comparison(a="x", b="y")
        return c.id, f.actor("ann", "annotator")

    admin, (cid, ann) = seeded(data)
    with db.begin() as session:
        first = judgments.submit(session, settings, actor=ann, comparison_id=cid, shown="left", now=T0)
    with db.begin() as session:
        assert judgments.undo_last(session, settings, actor=ann, now=T0 + timedelta(hours=1)) == cid
    with db.begin() as session:
        again = judgments.submit(session, settings, actor=ann, comparison_id=cid, shown="right",
                                 now=T0 + timedelta(hours=2))
    with db.read() as session:
        rows = session.execute(select(Judgment.id, Judgment.state, Judgment.supersedes_id)
                               .where(Judgment.comparison_id == cid).order_by(Judgment.id)).all()
    assert rows == [(first.judgment_id, JudgmentState.retracted, None),
                    (again.judgment_id, JudgmentState.active, first.judgment_id)]
    assert first.choice != again.choice
    word = {Choice.a: "x", Choice.b: "y"}
    assert _chosen(db, admin, until=T0 + timedelta(minutes=30)) == [(cid, word[first.choice], 1)]
    assert _chosen(db, admin, until=T0 + timedelta(minutes=90)) == []  # undone, not judged again yet
    assert _chosen(db, admin, until=T0 + timedelta(hours=3)) == [(cid, word[again.choice], 1)]
    assert _chosen(db, admin) == [(cid, word[again.choice], 1)]


def test_since_with_until_keeps_votes_cast_in_the_window(db, seeded):
    """``since`` filters the votes standing at ``until`` by when they were cast."""
    def data(f):
        c = f.comparison(a="x", b="y")
        old = f.judge(c, "ann", "a", state="superseded", created_at=T0)
        f.judge(c, "ann", "b", supersedes_id=old.id, created_at=T0 + timedelta(days=2))
        f.judge(c, "late", "b", state="retracted", created_at=T0 + timedelta(days=1),
                retracted_at=T0 + timedelta(days=4))
        return c.id

    admin, cid = seeded(data)
    # At T0+36h: ann's vote is still 'a' (cast at T0, before since), late's 'b' stands.
    assert _chosen(db, admin, since=T0 + timedelta(hours=12), until=T0 + timedelta(hours=36)) == [(cid, "y", 1)]
    assert _chosen(db, admin, since=T0, until=T0 + timedelta(hours=36), include_ties=True) == []
    # At T0+3d: ann's revision (cast at T0+2d) and late's vote both stand.
    assert _chosen(db, admin, since=T0 + timedelta(hours=12), until=T0 + timedelta(days=3)) == [(cid, "y", 2)]
    assert _chosen(db, admin, since=T0 + timedelta(days=1, hours=12),
                   until=T0 + timedelta(days=3)) == [(cid, "y", 1)]


def test_without_until_only_current_votes_count(db, seeded):
    """No ``until``: the votes active now, cast at or after ``since`` (the rule before ``until`` was historical)."""
    def data(f):
        c = f.comparison(a="x", b="y")
        old = f.judge(c, "ann", "a", state="superseded", created_at=T0)
        f.judge(c, "ann", "b", supersedes_id=old.id, created_at=T0 + timedelta(days=2))
        f.judge(c, "gone", "a", state="retracted", created_at=T0, retracted_at=T0 + timedelta(days=4))
        f.judge(c, "kept", "b", created_at=T0 - timedelta(days=1))
        return c.id

    admin, cid = seeded(data)
    assert _chosen(db, admin) == [(cid, "y", 2)]
    assert _chosen(db, admin, since=T0 + timedelta(days=1)) == [(cid, "y", 1)]
    assert _chosen(db, admin, since=T0 + timedelta(days=3)) == []


def test_raw_judgments_with_until_keep_the_stored_state(db, seeded):
    """The raw export selects rows by ``created_at`` and writes each row as stored (see the module docstring)."""
    def data(f):
        c = f.comparison()
        old = f.judge(c, "ann", "a", state="superseded", created_at=T0)
        new = f.judge(c, "ann", "b", supersedes_id=old.id, created_at=T0 + timedelta(days=2))
        return old.id, new.id

    admin, (old_id, new_id) = seeded(data)
    with db.begin() as session:
        rows = export.judgment_rows(session, actor=admin, filters=ExportFilter(until=T0 + timedelta(days=1)))
    assert [(r["judgment_id"], r["state"]) for r in rows] == [(old_id, "superseded")]


def test_annotator_filter(db, seeded):
    def data(f):
        c = f.comparison(a="x", b="y")
        f.judge(c, "alice", "a")
        f.judge(c, "bob", "b")
        f.judge(c, "carol", "b")
        f.judge(c, None, "b", source="imported")
        return c.id

    admin, _ = seeded(data)
    alice = _rows(db, admin, annotators=("alice",))
    assert alice[0]["chosen"] == "x" and alice[0]["n_judgments"] == 1
    ab = _rows(db, admin, annotators=("alice", "bob"))
    assert ab == []  # one each: split
    bc = _rows(db, admin, annotators=("bob", "carol"))
    assert bc[0]["chosen"] == "y" and bc[0]["n_judgments"] == 2
    with db.begin() as session, pytest.raises(NotFound, match="nobody"):
        export.preference_rows(session, actor=admin, filters=ExportFilter(annotators=("nobody",)))


def test_source_tag_filter(db, seeded):
    def data(f):
        hh = f.comparison(source_tag="hh")
        f.votes(hh, "a")
        shp = f.comparison(source_tag="shp")
        f.votes(shp, "a")
        inherited = f.comparison(prompt_tag="hh")  # comparison without a tag: the prompt's
        f.votes(inherited, "a")
        untagged = f.comparison()
        f.votes(untagged, "a")
        return hh.id, shp.id, inherited.id, untagged.id

    admin, (hh, shp, inherited, untagged) = seeded(data)
    rows = _rows(db, admin, source_tags=("hh",))
    assert {r["comparison_id"] for r in rows} == {hh, inherited}
    assert {r["source_tag"] for r in rows} == {"hh"}
    assert {r["comparison_id"] for r in _rows(db, admin, source_tags=("hh", "shp"))} == {hh, shp, inherited}
    assert _by_id(_rows(db, admin))[untagged]["source_tag"] is None
    # One string would be read as its letters ('h', 'h') and match nothing: refused, for either list.
    for one_string in ({"source_tags": "hh"}, {"annotators": "alice"}):
        with db.begin() as session, pytest.raises(PrefloopError, match="lists of names, not one string"):
            export.preference_rows(session, actor=admin, filters=ExportFilter(**one_string))


def test_gold_answer_is_not_a_vote_and_gold_can_be_excluded(db, seeded):
    def data(f):
        gold = f.comparison(a="x", b="y", is_gold=True, gold_choice="a")
        f.judge(gold, "ann", "b", was_gold=True)
        plain = f.comparison()
        f.votes(plain, "a")
        gold_no_votes = f.comparison(is_gold=True, gold_choice="a")
        return gold.id, plain.id, gold_no_votes.id

    admin, (gold, plain, gold_no_votes) = seeded(data)
    rows = _by_id(_rows(db, admin))
    assert set(rows) == {gold, plain}
    assert rows[gold]["chosen"] == "y" and rows[gold]["n_judgments"] == 1
    assert [r["comparison_id"] for r in _rows(db, admin, exclude_gold=True)] == [plain]


# --------------------------------------------------------------------------- row shape


CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye?", "name": "x"}]


def test_chat_prompts_give_conversational_rows(db, seeded):
    def data(f):
        c = f.comparison(messages=CHAT, a="bye", b="see you")
        f.votes(c, "a", "a")

    admin, _ = seeded(data)
    row = _rows(db, admin)[0]
    assert row["prompt"] == [{"role": m["role"], "content": m["content"]} for m in CHAT]
    assert row["chosen"] == [{"role": "assistant", "content": "bye"}]
    assert row["rejected"] == [{"role": "assistant", "content": "see you"}]


def test_mixed_export_is_all_conversational(db, seeded):
    def data(f):
        chat = f.comparison(messages=CHAT, a="bye", b="see you")
        f.votes(chat, "b")
        plain = f.comparison(text="plain question", a="p1", b="p2", source_tag="plain")
        f.votes(plain, "a")
        return chat.id, plain.id

    admin, (chat, plain) = seeded(data)
    rows = _by_id(_rows(db, admin))
    assert rows[plain]["prompt"] == [{"role": "user", "content": "plain question"}]
    assert rows[plain]["chosen"] == [{"role": "assistant", "content": "p1"}]
    assert rows[chat]["chosen"] == [{"role": "assistant", "content": "see you"}]
    # When the filters leave only text prompts, rows are plain strings again.
    text_only = _rows(db, admin, source_tags=("plain",))
    assert [(r["prompt"], r["chosen"]) for r in text_only] == [("plain question", "p1")]


def test_margin_is_mean_strength_of_winning_votes(db, seeded):
    def data(f):
        strong = f.comparison()
        f.judge(strong, "u1", "b", strength=3)
        f.judge(strong, "u2", "b", strength=1)
        f.judge(strong, "u3", "b")  # no strength: left out of the mean
        f.judge(strong, "u4", "a", strength=3)  # a losing vote does not count
        nostrength = f.comparison()
        f.judge(nostrength, "u1", "a")
        tie = f.comparison()
        f.judge(tie, "u1", "tie")
        return strong.id, nostrength.id, tie.id

    admin, (strong, nostrength, tie) = seeded(data)
    rows = _by_id(_rows(db, admin, margin=True, include_ties=True))
    assert rows[strong]["margin"] == pytest.approx(2.0)
    assert isinstance(rows[nostrength]["margin"], float) and rows[nostrength]["margin"] == 0.0
    assert rows[tie]["margin"] == 0.0


# --------------------------------------------------------------------------- raw judgments


def test_raw_judgments_have_every_field(db, seeded):
    def data(f):
        c = f.comparison(text="=cmd", a="+1", b="@x", source_tag="hh")
        old = f.judge(c, "ann", "a", state="superseded", a_on_left=False, strength=2,
                      rationale="-bad", flags=["toxic", "=x"], time_spent_ms=1234,
                      acquisition_strategy="bald", acquisition_score=-0.25,
                      created_at=T0)
        new = f.judge(c, "ann", "b", supersedes_id=old.id, a_on_left=True,
                      created_at=T0 + timedelta(minutes=1))
        f.judge(c, "other", "tie", state="retracted", retracted_at=T0 + timedelta(hours=1),
                created_at=T0 + timedelta(minutes=2))
        f.judge(c, "other", "a", is_probe=True, a_on_left=None, created_at=T0 + timedelta(minutes=3))
        chat = f.comparison(messages=CHAT, is_gold=True, gold_choice="a")
        f.judge(chat, None, "both_bad", source="imported", was_gold=True)
        return c.id, old.id, new.id

    admin, (cid, old_id, new_id) = seeded(data)
    with db.begin() as session:
        rows = export.judgment_rows(session, actor=admin)
    assert len(rows) == 5  # nothing is lost
    for row in rows:
        assert tuple(row) == export.JUDGMENT_FIELDS
    old, new, retracted, probe, imported = rows
    assert old["judgment_id"] == old_id and old["comparison_id"] == cid
    assert old["state"] == "superseded" and new["state"] == "active" and retracted["state"] == "retracted"
    assert new["supersedes_id"] == old_id
    assert old["annotator"] == "ann" and imported["annotator"] is None
    assert old["source"] == "annotator" and imported["source"] == "imported"
    assert (old["choice"], old["choice_shown"]) == ("a", "right")   # A shown on the right
    assert (new["choice"], new["choice_shown"]) == ("b", "right")   # B shown on the right
    assert retracted["choice_shown"] == "tie" and probe["choice_shown"] is None
    assert old["strength"] == 2 and old["rationale"] == "-bad" and old["flags"] == ["toxic", "=x"]
    assert old["a_on_left"] is False and old["time_spent_ms"] == 1234
    assert probe["is_probe"] is True and old["is_probe"] is False
    assert imported["was_gold"] is True and imported["is_gold"] is True and old["is_gold"] is False
    assert old["acquisition_strategy"] == "bald" and old["acquisition_score"] == -0.25
    assert old["model_version_id"] is None
    assert old["created_at"] == "2026-03-01T12:00:00+00:00"
    assert retracted["retracted_at"] == "2026-03-01T13:00:00+00:00" and old["retracted_at"] is None
    assert old["prompt"] == "=cmd" and old["response_a"] == "+1" and old["response_b"] == "@x"
    assert json.loads(imported["prompt"]) == CHAT
    assert old["source_tag"] == "hh" and old["prompt_id"] is not None
    assert old["response_a_id"] != old["response_b_id"]

    with db.begin() as session:
        assert [r["judgment_id"] for r in export.judgment_rows(
            session, actor=admin, filters=ExportFilter(annotators=("ann",)))] == [old_id, new_id]
        assert len(export.judgment_rows(
            session, actor=admin, filters=ExportFilter(include_imported=False))) == 4
        assert len(export.judgment_rows(
            session, actor=admin, filters=ExportFilter(exclude_gold=True))) == 4
        assert [r["judgment_id"] for r in export.judgment_rows(
            session, actor=admin,
            filters=ExportFilter(since=T0 + timedelta(seconds=30), until=T0 + timedelta(minutes=2)))
        ] == [new_id]


def test_csv_escapes_formulas_and_round_trips(db, seeded, out):
    def data(f):
        c = f.comparison(text="=HYPERLINK(\"x\")", a="+1+1", b="@SUM(A1)")
        f.judge(c, "-dash", "a", rationale="-2+3", flags=["=flag"], a_on_left=True,
                acquisition_score=-0.5, time_spent_ms=10)
        f.judge(c, "plain", "b", rationale="fine, \"quoted\"\nnewline", a_on_left=False)

    admin, _ = seeded(data)
    with db.begin() as session:
        data_bytes = export.judgments_bytes(session, actor=admin, format="csv")
        n = export.write_judgments(session, out / "j.csv", actor=admin, format="csv")
    assert n == 2
    assert (out / "j.csv").read_bytes() == data_bytes
    reader = list(csv.DictReader(io.StringIO(data_bytes.decode("utf-8"))))
    assert tuple(reader[0]) == export.JUDGMENT_FIELDS
    first, second = reader
    assert first["prompt"] == "'=HYPERLINK(\"x\")"
    assert first["response_a"] == "'+1+1" and first["response_b"] == "'@SUM(A1)"
    assert first["rationale"] == "'-2+3" and first["annotator"] == "'-dash"
    assert json.loads(first["flags"]) == ["=flag"]  # JSON text starts with '[': no prefix
    assert first["acquisition_score"] == "-0.5"      # numbers stay numbers
    assert first["a_on_left"] == "true" and second["a_on_left"] == "false"
    assert first["strength"] == "" and first["choice_shown"] == "left" and second["choice_shown"] == "left"  # B shown on the left
    assert second["rationale"] == "fine, \"quoted\"\nnewline"
    assert not any(v.startswith(("=", "+", "-", "@")) for row in reader for v in row.values()
                   if v and not v.lstrip("-").replace(".", "").isdigit())


def test_judgments_jsonl(db, seeded, out):
    def data(f):
        c = f.comparison(text="héllo ✓", a="a", b="b")
        f.judge(c, "ann", "a", flags=["x"])

    admin, _ = seeded(data)
    path = out / "j.jsonl"
    with db.begin() as session:
        assert export.write_judgments(session, path, actor=admin, format="jsonl") == 1
        raw = export.judgments_bytes(session, actor=admin, format="jsonl")
        with pytest.raises(PrefloopError, match="jsonl, csv or parquet"):
            export.judgments_bytes(session, actor=admin, format="xlsx")
    text = path.read_text(encoding="utf-8")
    assert "héllo ✓" in text  # ensure_ascii=False
    assert path.read_bytes() == raw
    [row] = [json.loads(line) for line in text.splitlines()]
    assert row["flags"] == ["x"] and row["prompt"] == "héllo ✓"
    assert set(row) == set(export.JUDGMENT_FIELDS)


# --------------------------------------------------------------------------- file formats


def _make_mixed(f, *, chat: bool):
    c1 = f.comparison(text="q1 ✓", a="a1", b="b1", source_tag="hh")
    f.votes(c1, "a", "a", "b")
    c2 = f.comparison(text="q2", a="a2", b="b2")
    f.judge(c2, "u0", "b", strength=3)
    if chat:
        c3 = f.comparison(messages=CHAT, a="a3", b="b3")
        f.votes(c3, "b", "b")


@pytest.mark.parametrize("chat", [False, True], ids=["text", "conversational"])
def test_jsonl_loads_with_datasets(db, seeded, out, hf_offline, chat):
    import datasets

    admin, _ = seeded(lambda f: _make_mixed(f, chat=chat))
    path = out / "prefs.jsonl"
    with db.begin() as session:
        n = export.write_preferences(session, path, actor=admin, format="jsonl", margin=True)
        expected = export.preference_rows(session, actor=admin, margin=True)
    assert n == len(expected) == (3 if chat else 2)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == _as_jsonl(expected)
    ds = datasets.load_dataset("json", data_files=str(path), split="train",
                               cache_dir=str(hf_offline / "datasets"))
    assert {"prompt", "chosen", "rejected", "margin", "agreement"} <= set(ds.column_names)
    assert ds.num_rows == n
    if chat:
        assert ds[0]["prompt"] == [{"role": "user", "content": "q1 ✓"}]
        assert ds[1]["chosen"] == [{"role": "assistant", "content": "b2"}]
        assert ds[2]["prompt"][0] == {"role": "system", "content": "be brief"}
    else:
        assert ds[0]["prompt"] == "q1 ✓" and ds[0]["chosen"] == "a1" and ds[0]["rejected"] == "b1"
        assert ds[1]["chosen"] == "b2" and ds[1]["margin"] == 3.0


@pytest.mark.parametrize("chat", [False, True], ids=["text", "conversational"])
def test_parquet_loads_with_pyarrow_and_datasets(db, seeded, out, hf_offline, chat):
    import datasets

    admin, _ = seeded(lambda f: _make_mixed(f, chat=chat))
    path = out / "prefs.parquet"
    with db.begin() as session:
        n = export.write_preferences(session, path, actor=admin, format="parquet",
                                     filters=ExportFilter(include_ties=True))
        expected = export.preference_rows(session, actor=admin, filters=ExportFilter(include_ties=True))
        downloaded = export.preferences_bytes(session, actor=admin, format="parquet",
                                              filters=ExportFilter(include_ties=True))
    table = pq.read_table(path)
    assert table.num_rows == n == len(expected)
    assert table.to_pylist() == expected
    assert pq.read_table(io.BytesIO(downloaded)).to_pylist() == expected
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train",
                               cache_dir=str(hf_offline / "datasets"))
    assert {"prompt", "chosen", "rejected", "is_tie"} <= set(ds.column_names)
    assert ds.to_list() == expected


def test_save_to_disk_directory_loads_and_is_replaced(db, seeded, out):
    import datasets

    admin, _ = seeded(lambda f: _make_mixed(f, chat=True))
    path = out / "prefs_ds"
    with db.begin() as session:
        n = export.write_preferences(session, path, actor=admin, format="datasets", margin=True)
        expected = export.preference_rows(session, actor=admin, margin=True)
    ds = datasets.load_from_disk(str(path))
    assert ds.num_rows == n == 3
    assert ds.to_list() == expected
    # Writing again replaces the directory, with no temporary leftovers.
    with db.begin() as session:
        n2 = export.write_preferences(session, path, actor=admin, format="datasets",
                                      filters=ExportFilter(min_agreement=0.9))
    ds2 = datasets.load_from_disk(str(path))
    assert ds2.num_rows == n2 == 2 and "margin" not in ds2.column_names
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_empty_export_is_still_a_valid_file(db, seeded, out):
    import datasets

    admin, _ = seeded(lambda f: f.comparison())
    with db.begin() as session:
        assert export.write_preferences(session, out / "e.parquet", actor=admin, format="parquet") == 0
        assert export.write_preferences(session, out / "e.jsonl", actor=admin, format="jsonl") == 0
        assert export.write_preferences(session, out / "e_ds", actor=admin, format="datasets") == 0
    assert pq.read_table(out / "e.parquet").column_names[:3] == ["prompt", "chosen", "rejected"]
    assert (out / "e.jsonl").read_bytes() == b""
    assert datasets.load_from_disk(str(out / "e_ds")).num_rows == 0


def test_preferences_bytes_jsonl_matches_rows(db, seeded):
    admin, _ = seeded(lambda f: _make_mixed(f, chat=False))
    with db.begin() as session:
        data = export.preferences_bytes(session, actor=admin, format="jsonl")
        rows = export.preference_rows(session, actor=admin)
        with pytest.raises(PrefloopError, match="jsonl or parquet"):
            export.preferences_bytes(session, actor=admin, format="datasets")
    assert [json.loads(line) for line in data.decode("utf-8").splitlines()] == _as_jsonl(rows)


def _as_jsonl(rows):
    """Preference rows as JSONL writes them: a missing tag or imported id is "" there, not null."""
    optional = ("source_tag", "external_id", "prompt_external_id", "chosen_external_id", "rejected_external_id")
    return [{k: ("" if k in optional and v is None else v) for k, v in row.items()} for row in rows]


def test_large_jsonl_whose_ids_start_late_loads_with_datasets(db, seeded, out, hf_offline):
    """``datasets`` types JSON columns from the first 10 MB: ids missing there and given later must still load."""
    import datasets

    big = "x" * 1_100_000

    def build(f):
        for i in range(6):  # about 13 MB; only the last pair (past the first 10 MB) has imported ids
            c = f.comparison(a=f"{i}a{big}", b=f"{i}b{big}")
            if i == 5:
                c.external_id, c.source_tag = "row-5", "late"
            f.votes(c, "a")

    admin, _ = seeded(build)
    path = out / "prefs.jsonl"
    with db.begin() as session:
        assert export.write_preferences(session, path, actor=admin, format="jsonl") == 6
    assert path.stat().st_size > 10 * 2**20
    ds = datasets.load_dataset("json", data_files=str(path), split="train",
                               cache_dir=str(hf_offline / "datasets"))
    assert ds.num_rows == 6
    assert ds["external_id"] == [""] * 5 + ["row-5"] and ds["source_tag"][-1] == "late"


def test_judgments_parquet_has_typed_columns_and_loads_with_datasets(db, seeded, out, hf_offline):
    """Columns null in early rows keep their type (JSONL cannot say it), so ``datasets`` loads any size."""
    import datasets

    def build(f):
        c1 = f.comparison(text="q1 ✓", a="a1", b="b1")
        f.judge(c1, "u0", "a")  # no strength, rationale, score...
        c2 = f.comparison(messages=CHAT)
        f.judge(c2, "u1", "b", strength=2, rationale="=clear", flags=["unsafe"], acquisition_score=0.25,
                acquisition_strategy="bald+diverse")

    admin, _ = seeded(build)
    path = out / "j.parquet"
    with db.begin() as session:
        assert export.write_judgments(session, path, actor=admin, format="parquet") == 2
        downloaded = export.judgments_bytes(session, actor=admin, format="parquet")
        expected = export.judgment_rows(session, actor=admin)
    table = pq.read_table(path)
    assert table.column_names == list(export.JUDGMENT_FIELDS)
    assert str(table.schema.field("strength").type) == "int64"
    assert str(table.schema.field("retracted_at").type) == "string"  # null in every row, still typed
    assert table.to_pylist() == expected == pq.read_table(io.BytesIO(downloaded)).to_pylist()
    assert expected[1]["rationale"] == "=clear" and json.loads(expected[1]["prompt"]) == CHAT
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train",
                               cache_dir=str(hf_offline / "datasets"))
    assert ds.to_list() == expected


def test_failed_write_leaves_previous_file(db, seeded, out, monkeypatch):
    admin, _ = seeded(lambda f: _make_mixed(f, chat=False))
    path = out / "prefs.jsonl"
    path.write_text("previous\n", encoding="utf-8")

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(export.os, "replace", boom)
    with db.begin() as session, pytest.raises(OSError):
        export.write_preferences(session, path, actor=admin, format="jsonl")
    assert path.read_text(encoding="utf-8") == "previous\n"
    assert [p.name for p in out.iterdir()] == ["prefs.jsonl"]


# --------------------------------------------------------------------------- audit, permissions, queries


def test_exports_are_audited_with_filters_and_counts(db, seeded, out):
    admin, _ = seeded(lambda f: _make_mixed(f, chat=False))
    filters = ExportFilter(since=T0 - timedelta(days=1), source_tags=("hh",))
    with db.begin() as session:
        export.write_preferences(session, out / "p.jsonl", actor=admin, format="jsonl", filters=filters)
        export.judgment_rows(session, actor=admin)
    with db.read() as session:
        events = list(session.scalars(select(AuditEvent).where(AuditEvent.action == "export")
                                      .order_by(AuditEvent.id)))
    assert len(events) == 2
    prefs, raw = (e.detail for e in events)
    assert prefs["kind"] == "preferences" and prefs["format"] == "jsonl"
    assert prefs["filters"]["source_tags"] == ["hh"]
    assert prefs["filters"]["since"] == "2026-02-28T12:00:00+00:00"
    assert prefs["counts"]["exported"] == 1 and prefs["counts"]["votes"] == 3
    assert raw["kind"] == "judgments" and raw["counts"] == {"rows": 4}
    assert all(e.actor_id == admin.id for e in events)


def test_annotators_are_denied_everything(db, seeded, out):
    admin, annotator = seeded(lambda f: f.actor("worker", "annotator"))
    calls = [
        lambda s, a: export.preference_rows(s, actor=a),
        lambda s, a: export.write_preferences(s, out / "p.jsonl", actor=a, format="jsonl"),
        lambda s, a: export.write_preferences(s, out / "p_ds", actor=a, format="datasets"),
        lambda s, a: export.preferences_bytes(s, actor=a, format="parquet"),
        lambda s, a: export.judgment_rows(s, actor=a),
        lambda s, a: export.write_judgments(s, out / "j.csv", actor=a, format="csv"),
        lambda s, a: export.judgments_bytes(s, actor=a, format="jsonl"),
    ]
    for call in calls:
        for who in (annotator, None):
            with db.begin() as session, pytest.raises(PermissionDenied):
                call(session, who)
        # An annotator claiming the admin role is still checked against the database.
        with db.begin() as session, pytest.raises(PermissionDenied):
            call(session, Actor(id=annotator.id, username="worker", role=Role.admin))
    assert list(out.iterdir()) == []
    with db.read() as session:
        assert session.scalar(select(AuditEvent.id).where(AuditEvent.action == "export")) is None


def test_query_count_does_not_grow_with_data(db, seeded):
    def data(f):
        for i in range(40):
            c = f.comparison(messages=CHAT if i % 2 else None)
            f.votes(c, "a", "b", "b", prefix="v")

    admin, _ = seeded(data)
    statements: list[str] = []

    def count_statements(_conn, _cursor, statement, *_args):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count_statements)
    try:
        with db.begin() as session:
            rows = export.preference_rows(session, actor=admin, filters=ExportFilter(annotators=("v0", "v1", "v2")))
            after_prefs = len(statements)
            raw = export.judgment_rows(session, actor=admin)
            after_raw = len(statements)
            historical = export.preference_rows(session, actor=admin,
                                                filters=ExportFilter(until=T0 + timedelta(days=1)))
            after_historical = len(statements)
    finally:
        event.remove(db.engine, "before_cursor_execute", count_statements)
    assert len(rows) == 40 and len(raw) == 120 and len(historical) == 40
    # Admin check + user lookup + votes + contents (+ the begin on SQLite), not one per row.
    assert after_prefs <= 6
    assert after_raw - after_prefs <= 3
    # With until, the votes as they stood are still one query (the replacing rows are joined in).
    assert after_historical - after_raw <= 4


def test_datasets_export_never_replaces_a_folder_that_is_not_an_export(db, seeded, out):
    """``--out`` pointing at an existing working folder must not delete it."""
    import datasets

    admin, _ = seeded(lambda f: _make_mixed(f, chat=False))
    work = out / "project"
    work.mkdir()
    (work / "notes.txt").write_text("keep me", encoding="utf-8")
    with db.begin() as session, pytest.raises(PrefloopError, match="not a datasets export"):
        export.write_preferences(session, work, actor=admin, format="datasets")
    assert (work / "notes.txt").read_text(encoding="utf-8") == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["project"]
    # An empty folder, or an earlier export, is replaced.
    empty = out / "empty"
    empty.mkdir()
    with db.begin() as session:
        assert export.write_preferences(session, empty, actor=admin, format="datasets") == 2
        assert export.write_preferences(session, empty, actor=admin, format="datasets") == 2
    assert datasets.load_from_disk(str(empty)).num_rows == 2


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "datasets"])
def test_large_preference_export_streams(db, out, fmt):
    """Writing a preference export holds a bounded slice of the texts in memory, not all of them."""
    import tracemalloc

    import datasets

    n, size = 1200, 10_000
    with db.begin() as session:
        f = Factory(session)
        admin = f.actor("boss", "admin")
        for i in range(n):
            c = f.comparison(text=f"q{i}", a=f"{i}a" + "x" * size, b=f"{i}b" + "y" * size,
                             messages=CHAT if i == n - 1 else None)
            f.judge(c, "u0", "b")
    total = n * 2 * size
    path = out / ("prefs" if fmt == "datasets" else f"prefs.{fmt}")
    tracemalloc.start()
    try:
        with db.begin() as session:
            written = export.write_preferences(session, path, actor=admin, format=fmt)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written == n
    assert peak < total / 2, f"peak {peak / 1e6:.1f} MB for {total / 1e6:.1f} MB of texts"
    if fmt == "jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    elif fmt == "parquet":
        rows = pq.read_table(path).to_pylist()
    else:
        rows = datasets.load_from_disk(str(path)).to_list()
    assert len(rows) == n
    # Ordered by comparison; one chat prompt makes every row conversational.
    assert rows[0]["prompt"] == [{"role": "user", "content": "q0"}]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "0b" + "y" * size}]
    assert rows[-1]["prompt"][0] == {"role": "system", "content": "be brief"}
    assert [r["comparison_id"] for r in rows] == sorted(r["comparison_id"] for r in rows)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_judgments_download_holds_the_file_about_once(db, fmt):
    """A text download is encoded as it is written: the file is in memory once, not three times."""
    import tracemalloc

    n, size = 300, 10_000
    with db.begin() as session:
        f = Factory(session)
        admin = f.actor("boss", "admin")
        for i in range(n):
            f.judge(f.comparison(text=f"q{i}", a=f"{i}a" + "x" * size, b=f"{i}b" + "y" * size), "u0", "a")
    tracemalloc.start()
    try:
        with db.begin() as session:
            data = export.judgments_bytes(session, actor=admin, format=fmt)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data) > n * 2 * size
    assert peak < 1.5 * len(data), f"peak {peak / 1e6:.1f} MB for a {len(data) / 1e6:.1f} MB file"


# --------------------------------------------------------------------------- one snapshot


def _commit_midway(monkeypatch, generator: str, commit) -> None:
    """Run ``commit()`` once the export has taken the first item from ``export.<generator>``."""
    real = getattr(export, generator)

    def midway(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == 1:
                commit()
            yield item

    monkeypatch.setattr(export, generator, midway)


@pytest.mark.parametrize("via", ["save", "download"])
@pytest.mark.parametrize("kind", ["preferences", "judgments"])
def test_an_export_is_one_snapshot_and_annotators_judge_while_it_runs(db, settings, seeded, out, monkeypatch,
                                                                        kind, via):
    """A revision and new votes committed while an export is being written are in none of its rows, and
    the annotator committing them does not wait for the export (on SQLite a write unit of work held the
    write lock for the whole export: that commit waited out the busy timeout and failed)."""
    import annotate.db

    def data(f):
        comparisons = [f.comparison() for _ in range(3)]
        for c in comparisons:
            f.votes(c, "a", "a", "b")
        return comparisons[-1].id, f.user("u0").id, f.user("u3").id, f.user("u4").id

    admin, (last, u0, u3, u4) = seeded(data)
    monkeypatch.setattr(export, "_ROW_CHUNK", 1)
    # The annotator's unit of work gives up after 2 s instead of 30 if the export holds the lock.
    monkeypatch.setattr(annotate.db, "SQLITE_BUSY_TIMEOUT_S", 2)
    annotator_db = Database(create_db_engine(settings.sqlalchemy_url))

    def judge_meanwhile():
        # u0 revises their vote on the last pair and two more annotators outvote A there.
        with annotator_db.begin() as session:
            old = session.scalar(select(Judgment).where(Judgment.comparison_id == last, Judgment.annotator_id == u0))
            old.state = JudgmentState.superseded
            session.flush()
            session.add_all([Judgment(comparison_id=last, annotator_id=who, choice=Choice.b, supersedes_id=sid,
                                      created_at=T0) for who, sid in ((u0, old.id), (u3, None), (u4, None))])

    def run(name: str) -> bytes:
        if via == "download":
            return export.download(db, actor=admin, kind=kind, format="jsonl")
        export.save(db, out / name, actor=admin, kind=kind, format="jsonl")
        return (out / name).read_bytes()

    before = run("before.jsonl")
    generator = "_iter_preference_rows" if kind == "preferences" else "_iter_judgments"
    original = getattr(export, generator)
    _commit_midway(monkeypatch, generator, judge_meanwhile)
    try:
        during = run("during.jsonl")
    finally:
        annotator_db.dispose()
    monkeypatch.setattr(export, generator, original)
    after = [json.loads(line) for line in run("after.jsonl").decode("utf-8").splitlines()]
    assert during == before
    if kind == "preferences":  # the last pair now goes to B, 4 votes of 5
        assert [(r["comparison_id"], r["n_judgments"]) for r in after][-1] == (last, 5)
        assert after[-1]["agreement"] == pytest.approx(0.8)
    else:
        assert len(after) == 12 and sum(r["state"] == "superseded" for r in after) == 1
    with db.read() as session:
        events = list(session.scalars(select(AuditEvent).where(AuditEvent.action == "export")
                                      .order_by(AuditEvent.id)))
    assert len(events) == 3 and all(e.actor_id == admin.id and e.detail["kind"] == kind for e in events)
    counted = events[0].detail["counts"]
    assert counted == {"rows": 9} if kind == "judgments" else counted["exported"] == 3
    assert events[0].detail.get("path") == (None if via == "download" else str(out / "before.jsonl"))


def test_save_and_download_deny_annotators_and_check_their_arguments(db, seeded, out):
    admin, annotator = seeded(lambda f: f.actor("worker", "annotator"))
    for kind in ("preferences", "judgments"):
        with pytest.raises(PermissionDenied):
            export.download(db, actor=annotator, kind=kind, format="jsonl")
        with pytest.raises(PermissionDenied):
            export.save(db, out / "x.jsonl", actor=annotator, kind=kind, format="jsonl")
    with pytest.raises(PrefloopError, match="preferences or judgments"):
        export.download(db, actor=admin, kind="votes", format="jsonl")
    with pytest.raises(PrefloopError, match="jsonl or parquet"):
        export.download(db, actor=admin, kind="preferences", format="datasets")
    with pytest.raises(PrefloopError, match="jsonl, csv or parquet"):
        export.save(db, out / "x.txt", actor=admin, kind="judgments", format="txt")
    assert list(out.iterdir()) == []
    with db.read() as session:
        assert session.scalar(select(AuditEvent.id).where(AuditEvent.action == "export")) is None


# --------------------------------------------------------------------------- leftovers of killed exports


LEFTOVERS = (".prefs.jsonl.tmp-0123abcd", ".prefs.jsonl.rows-89abcdef.arrow")
NOT_LEFTOVERS = (".other.jsonl.tmp-0123abcd", ".prefs.jsonl.tmp-0123abcd.bak", ".prefs.jsonl.tmp-mine",
                 ".prefs.jsonl.tmp-0123ABCD", "notes.txt")


def _litter(out):
    for name in (*LEFTOVERS, *NOT_LEFTOVERS):
        (out / name).write_text("half an export", encoding="utf-8")
    for name in (".prefs.jsonl.tmp-feedf00d", ".prefs.jsonl.old-00c0ffee"):  # datasets folders
        (out / name).mkdir()
        (out / name / "data-00000-of-00001.arrow").write_bytes(b"\0" * 10)


def test_next_export_removes_only_its_targets_stale_temporaries(db, seeded, out):
    admin, _ = seeded(lambda f: _make_mixed(f, chat=False))
    _litter(out)
    with db.begin() as session:
        assert export.write_preferences(session, out / "prefs.jsonl", actor=admin, format="jsonl") == 2
    assert sorted(p.name for p in out.iterdir()) == sorted((*NOT_LEFTOVERS, "prefs.jsonl"))
    # A raw-judgment export and a datasets export clean their own targets' leftovers too.
    (out / ".raw.csv.tmp-0123abcd").write_text("half", encoding="utf-8")
    (out / ".prefs_ds.tmp-0123abcd").mkdir()
    (out / ".prefs_ds.rows-0123abcd.arrow").write_bytes(b"half")
    with db.begin() as session:
        export.write_judgments(session, out / "raw.csv", actor=admin, format="csv")
        export.write_preferences(session, out / "prefs_ds", actor=admin, format="datasets")
    assert sorted(p.name for p in out.iterdir()) == sorted((*NOT_LEFTOVERS, "prefs.jsonl", "raw.csv", "prefs_ds"))


def test_an_export_still_writing_keeps_its_temporary_while_another_finishes(db, seeded, out):
    """Two exports to one target at once: the one that finishes first must not delete the other's file."""
    import threading

    admin, _ = seeded(lambda f: _make_mixed(f, chat=False))
    target = out / "prefs.jsonl"
    started, release, errors = threading.Event(), threading.Event(), []

    def slow_write(fh):
        fh.write(b"first\n")
        started.set()
        release.wait(30)
        fh.write(b"done\n")

    def first():
        try:
            export._write_file_atomic(target, slow_write)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert started.wait(30)
        (live,) = [p for p in out.iterdir() if p.name.startswith(".prefs.jsonl.tmp-")]
        with db.begin() as session:
            assert export.write_preferences(session, target, actor=admin, format="jsonl") == 2
        assert live.exists()
    finally:
        release.set()
        thread.join(30)
    assert errors == [] and target.read_bytes() == b"first\ndone\n"
    assert [p.name for p in out.iterdir()] == ["prefs.jsonl"]


_KILLED_EXPORT = """
import pathlib, sys, time
from annotate import cli, export

marker = pathlib.Path(sys.argv[1])
rows = export._iter_preference_rows

def stall(*args, **kwargs):
    for i, batch in enumerate(rows(*args, **kwargs)):
        yield batch
        marker.touch()  # the first slice is in the temporary: stop here until killed
        time.sleep(600)

export._iter_preference_rows = stall
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("fmt", ["trl-jsonl", "datasets"])
def test_export_after_a_killed_export_clears_its_leftovers(sqlite_db, sqlite_url, tmp_path, out, fmt):
    """SIGKILL a real ``prefloop export`` mid-write: no target, a leftover; the next export removes it."""
    import signal
    import subprocess
    import sys
    import time

    import datasets

    with sqlite_db.begin() as session:
        f = Factory(session)
        admin = f.actor("boss", "admin")
        for i in range(600):  # over two slices (_ROW_CHUNK), so the kill lands mid-write
            c = f.comparison(text=f"q{i}", a=f"{i}a" + "x" * 1000, b=f"{i}b" + "y" * 1000)
            f.judge(c, "u0", "a")
    target = out / ("prefs" if fmt == "datasets" else "prefs.jsonl")
    marker = tmp_path / "stalled"
    env = {**os.environ, "PREFLOOP_DATABASE_URL": sqlite_url, "PREFLOOP_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_EXPORT, str(marker), "export", "--format", fmt,
                             "--out", str(target)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the export never reached its second slice"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    left = sorted(p.name for p in out.iterdir())
    assert not target.exists() and left and all(n.startswith(f".{target.name}.") for n in left)

    with sqlite_db.begin() as session:
        format = "datasets" if fmt == "datasets" else "jsonl"
        assert export.write_preferences(session, target, actor=admin, format=format) == 600
    assert [p.name for p in out.iterdir()] == [target.name]
    n = (datasets.load_from_disk(str(target)).num_rows if fmt == "datasets"
         else len(target.read_text(encoding="utf-8").splitlines()))
    assert n == 600


@pytest.mark.parametrize("fmt", ["jsonl", "datasets"])
def test_an_out_path_under_a_file_says_it_is_a_file(db, seeded, out, fmt):
    """``--out notes.csv/x.jsonl`` said "folder 'notes.csv' does not exist", though it exists (as a file)."""
    admin, _ = seeded(lambda f: _make_mixed(f, chat=False))
    (out / "notes.csv").write_text("a,b\n", encoding="utf-8")
    with db.begin() as session, pytest.raises(PrefloopError, match=r"notes\.csv' is a file, not a folder"):
        export.write_preferences(session, out / "notes.csv" / "x", actor=admin, format=fmt)
    assert (out / "notes.csv").read_text(encoding="utf-8") == "a,b\n"


def test_untyped_json_columns_names_what_datasets_cannot_load(tmp_path):
    """A raw-judgments JSONL of an ordinary campaign (imported judgments first, with no annotator or
    strength, annotators' after) did not load in datasets at 13 MB, with no warning. The check names the
    columns null throughout the loader's first block and set after it; the loader fails on exactly those."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    def write(path, n_null, n_set):
        with open(path, "w") as fh:
            for i in range(n_null + n_set):
                fh.write(json.dumps({"id": i, "text": "x" * 200, "annotator": None if i < n_null else "ann",
                                     "strength": None if i < n_null else 2, "retracted_at": None}) + "\n")

    small = tmp_path / "small.jsonl"
    write(small, 5, 5)
    assert export.untyped_json_columns(small, block=500) == ["annotator", "strength"]
    assert export.untyped_json_columns(small) == []  # one block: the loader sees every row before typing

    big = tmp_path / "big.jsonl"
    write(big, 50_000, 10)  # about 13 MB of nulls first
    assert big.stat().st_size > export.DATASETS_JSON_BLOCK
    assert export.untyped_json_columns(big) == ["annotator", "strength"]
    with pytest.raises(DatasetGenerationError):
        load_dataset("json", data_files=str(big), split="train", cache_dir=str(tmp_path / "cache"))
    fine = tmp_path / "fine.jsonl"
    write(fine, 0, 50_010)
    assert export.untyped_json_columns(fine) == []
    assert load_dataset("json", data_files=str(fine), split="train", cache_dir=str(tmp_path / "c2")).num_rows == 50_010
