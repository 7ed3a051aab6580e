"""Running counts behind the annotator figures, kept in step with every judgment write.

Over a million judgments, counting votes per comparison and joining them back to
every judgment takes seconds; these tables hold the answer instead:

* ``comparison_votes``: live, non-probe annotator votes per comparison;
* ``annotator_votes``: judgments per (annotator, UTC day, own choice, the *other*
  annotators' votes on the same comparison) — majority agreement, pooled κ and
  Krippendorff's α come from these counts;
* ``annotator_days``: per (annotator, UTC day) counts and sums (sides, ties,
  gold, length, time, probes and flips);
* ``annotator_histograms``: per (annotator, UTC day) log-scale histograms of time
  and of time per 1,000 characters, for the medians.

**How they stay right.** ORM events on :class:`~annotate.models.Judgment`
(insert, and a change of ``state``) and on :class:`~annotate.models.Comparison`
(a change of ``gold_choice``) apply the change in the same transaction, with
atomic increments (``INSERT … ON CONFLICT DO UPDATE SET n = n + excluded.n``).
A new vote first increments its ``comparison_votes`` row (``UPDATE … RETURNING``):
that row lock serialises two annotators judging the same comparison at once, and
the second one then sees the first's judgment, so no count is lost.

What a judgment contributes is defined once, in SQL (:func:`judgment_facts`,
:func:`histogram_facts`, :func:`probe_facts`): the events select one row's
contribution with it, :func:`rebuild` recounts everything with it, and
``annotate.quality`` reads the raw judgments of a partial day with it.

Writes that bypass the ORM (Core ``insert(Judgment)``, raw SQL) are not seen;
today only imported judgments take that path, and they are not annotators'
(``source = imported``), so they count for none of these figures. Anything else
that writes judgments in bulk calls :func:`rebuild` afterwards. Judgments are
append-only: changing a live judgment's choice, sides, time, comparison,
annotator or probe flag in place is refused.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

from sqlalchemy import (
    Date,
    Float,
    Integer,
    String,
    and_,
    bindparam,
    case,
    cast,
    delete,
    event,
    func,
    inspect,
    literal,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import aliased

from annotate.models import (
    AnnotatorDay,
    AnnotatorHistogram,
    AnnotatorVotes,
    Choice,
    Comparison,
    ComparisonVotes,
    Judgment,
    JudgmentSource,
    JudgmentState,
    Response,
)

CHOICES: tuple[str, ...] = ("a", "b", "tie", "both_bad")
LOG_BUCKETS_PER_E = 16
"""Resolution of the time histograms: buckets of e^(1/16), about 6 % wide."""
DAY_SUMS = ("n", "n_sided", "n_left", "n_ties", "n_both_bad", "n_gold", "n_gold_correct", "n_length_decisive",
            "n_longer", "n_timed", "sx", "sy", "sxx", "syy", "sxy", "n_probes", "n_flips")
"""The summed columns of ``annotator_days``."""
_APPEND_ONLY = ("choice", "a_on_left", "time_spent_ms", "comparison_id", "annotator_id", "is_probe", "was_gold",
                "created_at", "source")


def live(j=Judgment):
    """A judgment that counts: active and made by an annotator (not imported)."""
    return and_(j.state == JudgmentState.active, j.source == JudgmentSource.annotator, j.annotator_id.is_not(None))


def in_period(j, since, until):
    conds = []
    if since is not None:
        conds.append(j.created_at >= since)
    if until is not None:
        conds.append(j.created_at < until)
    return and_(true(), *conds)


def n_if(cond):
    """1 when ``cond`` holds, else 0 (a per-row count)."""
    return case((cond, 1), else_=0)


def day_of(column, dialect: str):
    """The UTC calendar day of a timestamp column."""
    if dialect == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    return func.date(column, type_=Date)


def _bucket(value):
    return cast(func.floor(func.ln(value) * LOG_BUCKETS_PER_E), Integer)


def votes_from_scratch():
    """Per comparison: live, non-probe votes counted from the judgments (what ``comparison_votes`` holds)."""
    j = aliased(Judgment)
    return (select(j.comparison_id.label("comparison_id"),
                   *[func.sum(n_if(j.choice == Choice(c))).label(f"n_{c}") for c in CHOICES])
            .where(live(j), j.is_probe.is_(False)).group_by(j.comparison_id).subquery("votes"))


def judgment_facts(dialect: str, *conds, alive: bool = True, votes=None):
    """Per live, non-probe judgment matching ``conds``: its annotator, day, ``annotator_days`` contribution,
    choice, and histogram buckets ``time_bucket`` and ``speed_bucket`` (NULL when it has none).

    With ``votes`` (``comparison_votes`` or :func:`votes_from_scratch`), also the others' votes ``o_a``...
    ``alive=False`` drops the liveness filter (a row being retracted is no longer active).
    """
    j, ra, rb = Judgment, aliased(Response), aliased(Response)
    la, lb = ra.n_chars, rb.n_chars
    is_a, is_b = j.choice == Choice.a, j.choice == Choice.b
    decisive = or_(is_a, is_b)
    timed = and_(j.time_spent_ms.is_not(None), j.time_spent_ms > 0)
    x, y = cast(j.time_spent_ms, Float), cast(la + lb, Float)
    with_y = and_(timed, y.is_not(None))
    gold = and_(j.was_gold.is_(True), Comparison.gold_choice.is_not(None))
    zero = literal(0.0, Float)
    others = [] if votes is None else [
        (getattr(votes.c, f"n_{c}") - n_if(j.choice == Choice(c))).label(f"o_{c}") for c in CHOICES]
    stmt = (
        select(
            j.annotator_id.label("annotator_id"), day_of(j.created_at, dialect).label("day"),
            literal(1).label("n"),
            n_if(and_(decisive, j.a_on_left.is_not(None))).label("n_sided"),
            n_if(or_(and_(is_a, j.a_on_left.is_(True)), and_(is_b, j.a_on_left.is_(False)))).label("n_left"),
            n_if(j.choice == Choice.tie).label("n_ties"),
            n_if(j.choice == Choice.both_bad).label("n_both_bad"),
            n_if(gold).label("n_gold"),
            n_if(and_(gold, j.choice == Comparison.gold_choice)).label("n_gold_correct"),
            n_if(and_(decisive, la != lb)).label("n_length_decisive"),
            n_if(or_(and_(is_a, la > lb), and_(is_b, lb > la))).label("n_longer"),
            n_if(timed).label("n_timed"),
            case((timed, x), else_=zero).label("sx"),
            case((with_y, y), else_=zero).label("sy"),
            case((timed, x * x), else_=zero).label("sxx"),
            case((with_y, y * y), else_=zero).label("syy"),
            case((with_y, x * y), else_=zero).label("sxy"),
            literal(0).label("n_probes"), literal(0).label("n_flips"),
            j.choice.label("choice"),
            case((timed, _bucket(x))).label("time_bucket"),
            case((and_(with_y, y > 0), _bucket(x * 1000.0 / y))).label("speed_bucket"),
            *others,
        )
        .join(Comparison, Comparison.id == j.comparison_id)
        .join(ra, ra.id == Comparison.response_a_id)
        .join(rb, rb.id == Comparison.response_b_id)
        .where(live(j) if alive else true(), j.is_probe.is_(False), *conds)
    )
    return stmt if votes is None else stmt.join(votes, votes.c.comparison_id == j.comparison_id)


def probe_facts(dialect: str, *conds, alive: bool = True):
    """Per live probe matching ``conds`` that has a live original: ``n_probes`` 1 and ``n_flips`` 1 if it flipped."""
    probe, orig = Judgment, aliased(Judgment)
    zeros = [literal(0).label(k) for k in DAY_SUMS if k not in ("n_probes", "n_flips")]
    return (
        select(probe.annotator_id.label("annotator_id"), day_of(probe.created_at, dialect).label("day"),
               *zeros, literal(1).label("n_probes"), n_if(probe.choice != orig.choice).label("n_flips"))
        .join(orig, and_(orig.comparison_id == probe.comparison_id, orig.annotator_id == probe.annotator_id,
                         orig.is_probe.is_(False), live(orig)))
        .where(live(probe) if alive else true(), probe.is_probe.is_(True), *conds)
    )


def histogram_facts(dialect: str, *conds, alive: bool = True):
    """Per live, non-probe timed judgment matching ``conds``: its ``time`` and ``speed`` histogram buckets."""
    facts = judgment_facts(dialect, *conds, alive=alive).subquery()
    return union_all(*[
        select(facts.c.annotator_id, facts.c.day, literal(kind, String(8)).label("kind"),
               facts.c[f"{kind}_bucket"].label("bucket")).where(facts.c[f"{kind}_bucket"].is_not(None))
        for kind in ("time", "speed")])


# --------------------------------------------------------------------------- rebuild


def rebuild(connection: Connection) -> None:
    """Recount every rollup table from the judgments (the migration's backfill; after raw bulk writes)."""
    dialect = connection.dialect.name
    for table in (AnnotatorHistogram, AnnotatorDay, AnnotatorVotes, ComparisonVotes):
        connection.execute(delete(table))
    votes = votes_from_scratch()
    connection.execute(ComparisonVotes.__table__.insert().from_select(
        ["comparison_id", *[f"n_{c}" for c in CHOICES]], select(votes)))
    facts = judgment_facts(dialect, votes=ComparisonVotes.__table__).subquery()
    keys = [facts.c.annotator_id, facts.c.day, facts.c.choice, *[facts.c[f"o_{c}"] for c in CHOICES]]
    connection.execute(AnnotatorVotes.__table__.insert().from_select(
        ["annotator_id", "day", "choice", *[f"o_{c}" for c in CHOICES], "n"],
        select(*keys, func.count()).group_by(*keys)))
    facts = judgment_facts(dialect).subquery()
    sums = union_all(select(facts.c.annotator_id, facts.c.day, *[facts.c[k] for k in DAY_SUMS]),
                     probe_facts(dialect)).subquery()
    connection.execute(AnnotatorDay.__table__.insert().from_select(
        ["annotator_id", "day", *DAY_SUMS],
        select(sums.c.annotator_id, sums.c.day, *[func.sum(sums.c[k]) for k in DAY_SUMS])
        .group_by(sums.c.annotator_id, sums.c.day)))
    hist = histogram_facts(dialect).subquery()
    hkeys = [hist.c.annotator_id, hist.c.day, hist.c.kind, hist.c.bucket]
    connection.execute(AnnotatorHistogram.__table__.insert().from_select(
        ["annotator_id", "day", "kind", "bucket", "n"], select(*hkeys, func.count()).group_by(*hkeys)))


# --------------------------------------------------------------------------- incremental maintenance


def _insert(dialect: str, table):
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _upsert_rows(dialect: str, table, keys: list[str], sums: list[str], source, sign):
    """``INSERT … SELECT`` of ``sign`` × the rows of ``source`` (columns ``keys + sums``) into ``table``,
    adding to the sums of rows that exist (``ON CONFLICT DO UPDATE SET s = s + excluded.s``)."""
    sub = source.subquery()
    rows = select(*[sub.c[k] for k in keys], *[(sub.c[s] * sign).label(s) for s in sums]).where(true())
    stmt = _insert(dialect, table).from_select(keys + sums, rows)
    return stmt.on_conflict_do_update(index_elements=keys, set_={s: table.c[s] + stmt.excluded[s] for s in sums})


_DAY_KEYS = ["annotator_id", "day"]
_HIST_KEYS = ["annotator_id", "day", "kind", "bucket"]
_VOTE_KEYS = ["annotator_id", "day", "choice", *[f"o_{c}" for c in CHOICES]]


@functools.lru_cache(maxsize=None)
def _statements(dialect: str) -> SimpleNamespace:
    """The maintenance statements, built once per dialect (parameters: ``jid``, ``sign``, ``cid``, ``uid``...)."""
    j, p = Judgment, aliased(Judgment)
    jid, sign = bindparam("jid", type_=Integer), bindparam("sign", type_=Integer)
    me = j.id == jid
    day_table, cv, av = AnnotatorDay.__table__, ComparisonVotes.__table__, AnnotatorVotes.__table__
    votes = _insert(dialect, av).values({k: bindparam(k) for k in [*_VOTE_KEYS, "n"]})
    zeros = [literal(0).label(k) for k in DAY_SUMS if k not in ("n_probes", "n_flips")]
    probes_of = (select(p.annotator_id.label("annotator_id"), day_of(p.created_at, dialect).label("day"), *zeros,
                        literal(1).label("n_probes"),
                        n_if(p.choice != bindparam("original", type_=String)).label("n_flips"))
                 .where(live(p), p.is_probe.is_(True), p.comparison_id == bindparam("cid"),
                        p.annotator_id == bindparam("uid")))
    return SimpleNamespace(
        row=select(j.comparison_id, j.annotator_id, j.choice, j.is_probe, day_of(j.created_at, dialect),
                   j.state, j.source).where(me),
        probe=_upsert_rows(dialect, day_table, _DAY_KEYS, list(DAY_SUMS), probe_facts(dialect, me, alive=False), sign),
        ensure_votes=_insert(dialect, cv).values(comparison_id=bindparam("cid")).on_conflict_do_nothing(),
        bump_votes=(update(cv).where(cv.c.comparison_id == bindparam("cid"))
                    .values({f"n_{c}": cv.c[f"n_{c}"] + bindparam(f"d_{c}", type_=Integer) for c in CHOICES})
                    .returning(*[cv.c[f"n_{c}"] for c in CHOICES])),
        others=(select(j.annotator_id, j.choice, day_of(j.created_at, dialect))
                .where(j.comparison_id == bindparam("cid"), live(), j.is_probe.is_(False), j.id != jid)),
        votes=votes.on_conflict_do_update(index_elements=_VOTE_KEYS, set_={"n": av.c.n + votes.excluded.n}),
        day=_upsert_rows(dialect, day_table, _DAY_KEYS, list(DAY_SUMS), judgment_facts(dialect, me, alive=False),
                         sign),
        hist=_upsert_rows(dialect, AnnotatorHistogram.__table__, _HIST_KEYS, ["n"],
                          _histogram_rows(histogram_facts(dialect, me, alive=False)), sign),
        probes_of_original=_upsert_rows(dialect, day_table, _DAY_KEYS, list(DAY_SUMS), probes_of, sign),
    )


def _apply(connection: Connection, judgment_id: int, sign: int, row=None) -> None:
    """Add (1) or remove (-1) one judgment's contribution (the caller knows it was or became live)."""
    st = _statements(connection.dialect.name)
    if row is None:
        row = connection.execute(st.row, {"jid": judgment_id}).one()
    cid, uid, choice, is_probe, day = row[:5]
    choice = Choice(choice).value
    if is_probe:
        connection.execute(st.probe, {"jid": judgment_id, "sign": sign})
        return

    connection.execute(st.ensure_votes, {"cid": cid})
    # Locks the comparison's vote row: a concurrent vote on it waits here, then sees this one.
    after = connection.execute(st.bump_votes, {"cid": cid, **{f"d_{c}": sign if c == choice else 0
                                                               for c in CHOICES}}).one()
    after = dict(zip(CHOICES, after))
    before = {**after, choice: after[choice] - sign}
    # This judgment's "others" are the votes without it: before it was added, after it was removed.
    moves = [(uid, day, choice, before if sign > 0 else after, sign)]
    for k_uid, k_choice, k_day in connection.execute(st.others, {"cid": cid, "jid": judgment_id}).all():
        k_choice = Choice(k_choice).value
        moves += [(k_uid, k_day, k_choice, {c: before[c] - (c == k_choice) for c in CHOICES}, -1),
                  (k_uid, k_day, k_choice, {c: after[c] - (c == k_choice) for c in CHOICES}, 1)]
    # Rows in one key order in every transaction: two judgments on different comparisons that share
    # annotators touch each other's rows, and in opposite orders they deadlocked on PostgreSQL.
    moves.sort(key=lambda m: (m[0], str(m[1]), m[2], *(m[3][c] for c in CHOICES), m[4]))
    connection.execute(st.votes, [{"annotator_id": u, "day": d, "choice": ch, "n": n,
                                   **{f"o_{c}": o[c] for c in CHOICES}} for u, d, ch, o, n in moves])
    params = {"jid": judgment_id, "sign": sign}
    connection.execute(st.day, params)
    connection.execute(st.hist, params)
    connection.execute(st.probes_of_original, {"cid": cid, "uid": uid, "original": choice, "sign": sign})


def _histogram_rows(facts):
    sub = facts.subquery()
    return select(sub.c.annotator_id, sub.c.day, sub.c.kind, sub.c.bucket, literal(1).label("n"))


def _gold_answer_changed(connection: Connection, comparison_id: int, old: str | None, new: str | None) -> None:
    """Re-score the live gold judgments of a comparison whose known answer changed."""
    dialect = connection.dialect.name
    j = Judgment

    def score(answer):
        if answer is None:
            return literal(0), literal(0)
        return literal(1), n_if(j.choice == Choice(answer))

    (old_n, old_ok), (new_n, new_ok) = score(old), score(new)
    delta = {"n_gold": new_n - old_n, "n_gold_correct": new_ok - old_ok}
    source = (select(j.annotator_id.label("annotator_id"), day_of(j.created_at, dialect).label("day"),
                     *[delta.get(k, literal(0)).label(k) for k in DAY_SUMS])
              .where(j.comparison_id == comparison_id, live(), j.is_probe.is_(False), j.was_gold.is_(True)))
    connection.execute(_upsert_rows(dialect, AnnotatorDay.__table__, _DAY_KEYS, list(DAY_SUMS), source, 1))


def _old_value(target, name: str):
    history = inspect(target).attrs[name].history
    return history.deleted[0] if history.deleted else getattr(target, name)


def _is_live(state, source, annotator_id) -> bool:
    return (annotator_id is not None and state is not None and JudgmentState(state) is JudgmentState.active
            and JudgmentSource(source or JudgmentSource.annotator) is JudgmentSource.annotator)


@event.listens_for(Judgment, "after_insert")
def _judgment_inserted(mapper, connection, target) -> None:
    row = connection.execute(_statements(connection.dialect.name).row, {"jid": target.id}).one()
    if _is_live(row.state, row.source, row.annotator_id):
        _apply(connection, target.id, 1, row)


@event.listens_for(Judgment, "after_update")
def _judgment_updated(mapper, connection, target) -> None:
    was = _is_live(_old_value(target, "state"), _old_value(target, "source"), _old_value(target, "annotator_id"))
    now = _is_live(target.state, target.source, target.annotator_id)
    if was and any(inspect(target).attrs[name].history.has_changes() for name in _APPEND_ONLY):
        raise ValueError(f"judgment {target.id} is append-only: insert a new judgment that supersedes it")
    if was != now:
        _apply(connection, target.id, 1 if now else -1)


@event.listens_for(Comparison, "after_update")
def _comparison_updated(mapper, connection, target) -> None:
    history = inspect(target).attrs.gold_choice.history
    if history.has_changes():
        old = history.deleted[0] if history.deleted else None
        old = None if old is None else Choice(old).value
        new = None if target.gold_choice is None else Choice(target.gold_choice).value
        if old != new:
            _gold_answer_changed(connection, target.id, old, new)
