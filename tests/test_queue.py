"""Queue and judgment services on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from annotate import judgments, queue
from annotate.campaign import get_options
from annotate.errors import PermissionDenied, QueueError
from annotate.models import Comparison, ComparisonStatus, Judgment, JudgmentState, Lease, utcnow
from tests.factories import make_comparisons, make_user


@pytest.fixture
def opts(db, settings):
    with db.read() as s:
        return get_options(s, settings)


def _no_mix(opts):
    from dataclasses import replace
    return replace(opts, gold_rate=0.0, probe_rate=0.0)


def test_highest_priority_first_and_stable_on_reload(db, settings, opts):
    with db.begin() as s:
        ann = make_user(s, "ann")
        ids = make_comparisons(s, 5, priority=lambda i: i)  # the last one has the highest priority
    with db.begin() as s:
        first = queue.next_comparison(s, settings, _no_mix(opts), actor=ann)
    with db.begin() as s:
        again = queue.next_comparison(s, settings, _no_mix(opts), actor=ann)
    assert first.comparison_id == ids[-1]
    assert again.comparison_id == first.comparison_id  # reload: same pair, same sides
    assert again.a_on_left == first.a_on_left


def test_submit_maps_sides_and_advances(db, settings, opts):
    with db.begin() as s:
        ann = make_user(s, "ann")
        make_comparisons(s, 3)
    o = _no_mix(opts)
    seen = []
    for _ in range(3):
        with db.begin() as s:
            a = queue.next_comparison(s, settings, o, actor=ann)
            seen.append(a)
            judgments.submit(s, settings, actor=ann, comparison_id=a.comparison_id, shown="left", strength=2,
                             rationale="  clearer ", flags=["unsafe"], time_spent_ms=1200)
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=ann) is None
        rows = {j.comparison_id: j for j in s.scalars(select(Judgment))}
        for a in seen:
            j = rows[a.comparison_id]
            assert j.choice.value == ("a" if a.a_on_left else "b")
            assert j.a_on_left == a.a_on_left and j.strength == 2 and j.rationale == "clearer"
            assert j.flags == ["unsafe"]
        assert s.scalar(select(func.count()).select_from(Lease)) == 0
        assert all(c.status is ComparisonStatus.complete for c in s.scalars(select(Comparison)))


@pytest.mark.parametrize("bad, message", [
    ({"shown": "left", "strength": 4}, "strength is 1, 2 or 3"),
    ({"shown": "tie", "strength": 1}, "only applies when one response is better"),
    ({"shown": "both_bad", "strength": 3}, "only applies when one response is better"),
    ({"shown": "left", "rationale": "x" * (judgments.MAX_RATIONALE_CHARS + 1)}, "keep the rationale under"),
    ({"shown": "left", "flags": ["unsafe", "boring"]}, "unknown flags: boring"),
])
def test_submit_refuses_what_the_page_cannot_send_and_keeps_the_pair(db, settings, opts, bad, message):
    """The service checks strength, rationale and flags itself (not only the page): nothing is stored and
    the pair stays the annotator's, so the same press with valid extras goes through."""
    with db.begin() as s:
        ann = make_user(s, "ann")
        make_comparisons(s, 2)
    with db.begin() as s:
        cid = queue.next_comparison(s, settings, _no_mix(opts), actor=ann).comparison_id
    with pytest.raises(QueueError, match=message), db.begin() as s:
        judgments.submit(s, settings, actor=ann, comparison_id=cid, **bad)
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Judgment)) == 0
    with db.begin() as s:
        judgments.submit(s, settings, actor=ann, comparison_id=cid, shown=bad["shown"])
    with db.read() as s:
        assert s.scalar(select(Judgment.comparison_id)) == cid


def test_sides_are_random_but_recorded(db, settings, opts):
    with db.begin() as s:
        ann = make_user(s, "ann")
        make_comparisons(s, 40)
    sides = [queue.a_on_left_for(cid, ann.id, settings.queue_seed) for cid in range(1, 41)]
    assert 8 < sum(sides) < 32


def test_with_any_queue_seed_the_sides_served_are_the_sides_a_press_is_read_against(db, settings, opts):
    """PREFLOOP_QUEUE_SEED other than 0: the page laid the pair out with seed 0 and submit read the press with
    the configured seed, so half the pairs were refused ("... swapped its sides, so nothing was saved") at
    every press (an annotator team's dogfood run on PostgreSQL)."""
    from dataclasses import replace

    seeded = replace(settings, queue_seed=7)
    with db.begin() as s:
        ann = make_user(s, "ann")
        cids = make_comparisons(s, 24)
    shown = {}
    for _ in cids:
        with db.begin() as s:
            a = queue.next_comparison(s, seeded, _no_mix(opts), actor=ann)
            shown[a.comparison_id] = a.a_on_left
            assert a.a_on_left == queue.a_on_left_for(a.comparison_id, ann.id, 7)
            judgments.submit(s, seeded, actor=ann, comparison_id=a.comparison_id, shown="left",
                             a_on_left_shown=a.a_on_left)
    assert sorted(shown) == sorted(cids)
    # Both layouts occur, and seed 0 would have laid out some pairs the other way round.
    assert 0 < sum(shown.values()) < len(cids)
    assert any(queue.a_on_left_for(c, ann.id, 0) != left for c, left in shown.items())
    with db.read() as s:
        chosen = {j.comparison_id: j.choice.value for j in s.scalars(select(Judgment))}
    assert chosen == {c: "a" if left else "b" for c, left in shown.items()}


def test_overlap_two_serves_two_annotators_not_three(db, settings, opts):
    o = _no_mix(opts)
    with db.begin() as s:
        a, b, c = make_user(s, "a"), make_user(s, "b"), make_user(s, "c")
        (cid,) = make_comparisons(s, 1, overlap=2)
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=a).comparison_id == cid
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=b).comparison_id == cid
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=c) is None  # two live leases fill overlap 2


def test_expired_lease_frees_the_slot(db, settings, opts):
    o = _no_mix(opts)
    with db.begin() as s:
        a, b = make_user(s, "a"), make_user(s, "b")
        (cid,) = make_comparisons(s, 1)
    with db.begin() as s:
        queue.next_comparison(s, settings, o, actor=a)
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=b) is None
    later = utcnow() + timedelta(seconds=settings.lease_seconds + 1)
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=b, now=later).comparison_id == cid
    # the late judgment of the first annotator is still kept, never silently dropped
    with db.begin() as s:
        judgments.submit(s, settings, actor=a, comparison_id=cid, shown="tie", now=later)
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Judgment)) == 1


def test_a_late_judgment_of_a_pair_others_filled_is_kept_and_marked_extra(db, settings, opts):
    """The pair sat on a's screen past the lease; b took it and filled its overlap; a's press still
    counts (never silently lost) and says it was one vote more than asked, so the page can tell a."""
    o = _no_mix(opts)
    with db.begin() as s:
        a, b = make_user(s, "a"), make_user(s, "b")
        (cid,) = make_comparisons(s, 1)
    with db.begin() as s:
        queue.next_comparison(s, settings, o, actor=a)
    later = utcnow() + timedelta(seconds=settings.lease_seconds + 1)
    with db.begin() as s:
        queue.next_comparison(s, settings, o, actor=b, now=later)
        assert judgments.submit(s, settings, actor=b, comparison_id=cid, shown="left", now=later).extra is False
    with db.begin() as s:
        late = judgments.submit(s, settings, actor=a, comparison_id=cid, shown="right", now=later)
    assert late.extra is True
    with db.read() as s:
        c = s.get(Comparison, cid)
        assert c.judgment_count == 2 and c.status == ComparisonStatus.complete
        assert s.scalar(select(func.count()).select_from(Judgment).where(Judgment.state == JudgmentState.active)) == 2


def test_pair_on_screen_past_its_lease_is_served_again_to_the_same_annotator(db, settings, opts):
    """The lease ran out while the pair was on screen and nobody else took it: the annotator's next
    request (any interaction reruns the page) gets that pair back, sides unchanged, lease renewed."""
    o = _no_mix(opts)
    with db.begin() as s:
        a = make_user(s, "a")
        ids = make_comparisons(s, 3, priority=lambda i: i)
    t0 = utcnow()
    with db.begin() as s:
        first = queue.next_comparison(s, settings, o, actor=a, now=t0)
    later = t0 + timedelta(seconds=settings.lease_seconds + 60)
    with db.begin() as s:
        again = queue.next_comparison(s, settings, o, actor=a, now=later)
    assert (again.comparison_id, again.a_on_left) == (first.comparison_id, first.a_on_left)
    assert again.expires_at > later
    with db.begin() as s:
        judgments.submit(s, settings, actor=a, comparison_id=first.comparison_id, shown="left", now=later)
        assert queue.next_comparison(s, settings, o, actor=a, now=later).comparison_id == ids[-2]
    with db.read() as s:
        assert s.scalars(select(Lease.comparison_id)).all() == [ids[-2]]


def test_expired_lease_taken_by_another_comes_back_when_there_is_room(db, settings, opts):
    """Someone else took the pair once the lease ran out (overlap 1): the annotator gets another
    pair, and the expired lease does not hide the first one from them once it is free again."""
    o = _no_mix(opts)
    with db.begin() as s:
        a, b = make_user(s, "a"), make_user(s, "b")
        low, high = make_comparisons(s, 2, priority=lambda i: i)
    t0 = utcnow()
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=a, now=t0).comparison_id == high
    later = t0 + timedelta(seconds=settings.lease_seconds + 60)
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=b, now=later).comparison_id == high
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=a, now=later).comparison_id == low
        assert judgments.progress(s, actor=a, now=later).remaining == 2
    with db.begin() as s:
        queue.skip(s, actor=b, comparison_id=high, now=later)
        judgments.submit(s, settings, actor=a, comparison_id=low, shown="tie", now=later)
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=a, now=later).comparison_id == high


def test_expired_leases_that_cannot_be_renewed_are_dropped(db, settings, opts):
    """Pairs others filled while the annotator was away: their expired leases are tried once and deleted,
    not tried again (a lock and a count each) at every later claim, where CANDIDATES_PER_CLAIM of them hid
    any renewable lease behind them. The annotator gets a free pair, and a filled pair with room again is
    served in the queue's order."""
    o = _no_mix(opts)
    with db.begin() as s:
        a, b = make_user(s, "a"), make_user(s, "b")
        ids = make_comparisons(s, queue.CANDIDATES_PER_CLAIM + 3, priority=lambda i: i)
    full, (free,) = ids[1:], ids[:1]
    t0 = utcnow()
    with db.begin() as s:
        for i, cid in enumerate(full):
            s.add(Lease(comparison_id=cid, annotator_id=a.id, created_at=t0 + timedelta(seconds=i),
                        expires_at=t0 + timedelta(seconds=settings.lease_seconds)))
    later = t0 + timedelta(seconds=settings.lease_seconds + 60)
    with db.begin() as s:
        for cid in full:  # b judges every one of them (overlap 1)
            judgments.submit(s, settings, actor=b, comparison_id=cid, shown="left", now=later)
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=a, now=later).comparison_id == free
    with db.read() as s:
        left = s.scalars(select(Lease.comparison_id).where(Lease.annotator_id == a.id,
                                                            Lease.comparison_id.in_(full))).all()
    assert len(left) == len(full) - queue.CANDIDATES_PER_CLAIM  # the oldest tried, and dropped
    with db.begin() as s:
        judgments.submit(s, settings, actor=a, comparison_id=free, shown="tie", now=later)
        assert queue.next_comparison(s, settings, o, actor=a, now=later) is None
    with db.read() as s:
        assert s.scalars(select(Lease.comparison_id).where(Lease.annotator_id == a.id)).all() == []


def test_remaining_leaves_out_what_the_annotator_judged_or_skipped(db, settings, opts):
    """The page's count of pairs left: open pairs still needing votes, less those this annotator judged or
    skipped (others' work on them does not count)."""
    o = _no_mix(opts)
    with db.begin() as s:
        a, b = make_user(s, "a"), make_user(s, "b")
        make_comparisons(s, 4, overlap=2)  # a judged pair stays open for a second vote
    with db.begin() as s:
        judged = queue.next_comparison(s, settings, o, actor=a).comparison_id
        judgments.submit(s, settings, actor=a, comparison_id=judged, shown="left")
        skipped = queue.next_comparison(s, settings, o, actor=a).comparison_id
        queue.skip(s, actor=a, comparison_id=skipped)
    with db.read() as s:
        assert s.get(Comparison, judged).status is ComparisonStatus.open
        assert queue.remaining_for(s, actor=a) == 2
        assert queue.remaining_for(s, actor=b) == 4


def test_double_submit_is_refused_not_duplicated(db, settings, opts):
    o = _no_mix(opts)
    with db.begin() as s:
        a = make_user(s, "a")
        make_comparisons(s, 2)
    with db.begin() as s:
        cid = queue.next_comparison(s, settings, o, actor=a).comparison_id
        judgments.submit(s, settings, actor=a, comparison_id=cid, shown="left")
    with pytest.raises(QueueError), db.begin() as s:
        judgments.submit(s, settings, actor=a, comparison_id=cid, shown="right")
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Judgment)) == 1


def test_undo_retracts_and_serves_again_then_supersedes(db, settings, opts):
    o = _no_mix(opts)
    with db.begin() as s:
        a = make_user(s, "a")
        make_comparisons(s, 3)
    with db.begin() as s:
        cid = queue.next_comparison(s, settings, o, actor=a).comparison_id
        first = judgments.submit(s, settings, actor=a, comparison_id=cid, shown="left")
    with db.begin() as s:
        queue.next_comparison(s, settings, o, actor=a)  # holds the next pair now
        assert judgments.undo_last(s, settings, actor=a) == cid
    with db.begin() as s:
        again = queue.next_comparison(s, settings, o, actor=a)
        assert again.comparison_id == cid
        assert s.get(Comparison, cid).status is ComparisonStatus.open
        second = judgments.submit(s, settings, actor=a, comparison_id=cid, shown="right")
    with db.read() as s:
        old, new = s.get(Judgment, first.judgment_id), s.get(Judgment, second.judgment_id)
        assert old.state is JudgmentState.retracted and old.retracted_at is not None
        assert new.state is JudgmentState.active and new.supersedes_id == old.id
        assert new.choice != old.choice
        assert s.get(Comparison, cid).judgment_count == 1


def test_undone_pairs_come_back_in_the_order_first_judged_then_the_pair_that_was_on_screen(db, settings, opts):
    """Judge three pairs, undo three times: the annotator re-judges them in the order they first judged
    them, then gets the pair they had on screen. (Before, the undone pairs all got one time and came
    back by lease id: the pair on screen first, then the undone ones last to first.)"""
    o = _no_mix(opts)
    with db.begin() as s:
        a = make_user(s, "a")
        make_comparisons(s, 6, priority=lambda i: i)
    t = utcnow()
    judged = []
    for step in range(3):
        with db.begin() as s:
            cid = queue.next_comparison(s, settings, o, actor=a, now=t + timedelta(seconds=step)).comparison_id
            judgments.submit(s, settings, actor=a, comparison_id=cid, shown="tie", now=t + timedelta(seconds=step))
            judged.append(cid)
    with db.begin() as s:
        on_screen = queue.next_comparison(s, settings, o, actor=a, now=t + timedelta(seconds=5)).comparison_id
    for step in range(3):
        with db.begin() as s:
            judgments.undo_last(s, settings, actor=a, now=t + timedelta(seconds=6 + step))
    served = []
    for step in range(4):
        now = t + timedelta(seconds=10 + step)
        with db.begin() as s:
            cid = queue.next_comparison(s, settings, o, actor=a, now=now).comparison_id
            judgments.submit(s, settings, actor=a, comparison_id=cid, shown="left", now=now)
            served.append(cid)
    assert served == judged + [on_screen]


def test_skip_releases_and_is_not_served_again(db, settings, opts):
    o = _no_mix(opts)
    with db.begin() as s:
        a, b = make_user(s, "a"), make_user(s, "b")
        make_comparisons(s, 2, priority=lambda i: i)
    with db.begin() as s:
        first = queue.next_comparison(s, settings, o, actor=a).comparison_id
        queue.skip(s, actor=a, comparison_id=first)
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=a).comparison_id != first
        assert queue.next_comparison(s, settings, o, actor=b).comparison_id == first


def test_undo_right_after_a_skip_unskips_that_pair(db, settings, opts):
    """Undo reverses the latest action: a skip newer than the latest judgment is undone (the pair is
    served again, the judgment stays); the next undo withdraws that judgment."""
    o = _no_mix(opts)
    with db.begin() as s:
        a = make_user(s, "a")
        make_comparisons(s, 4, priority=lambda i: i)
    t = utcnow()
    with db.begin() as s:
        judged = queue.next_comparison(s, settings, o, actor=a, now=t).comparison_id
        judgments.submit(s, settings, actor=a, comparison_id=judged, shown="left", now=t)
    with db.begin() as s:
        skipped = queue.next_comparison(s, settings, o, actor=a, now=t + timedelta(seconds=5)).comparison_id
        queue.skip(s, actor=a, comparison_id=skipped, now=t + timedelta(seconds=5))
    t2 = t + timedelta(seconds=8)
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=a, now=t2).comparison_id not in (judged, skipped)
        assert judgments.undo_last(s, settings, actor=a, now=t2) == skipped
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=a, now=t2).comparison_id == skipped
        assert s.scalar(select(Judgment.state)) is JudgmentState.active
        undone = judgments.undo_last_action(s, settings, actor=a, now=t2)
    assert (undone.comparison_id, undone.skip) == (judged, False)
    with db.read() as s:
        assert s.scalar(select(Judgment.state)) is JudgmentState.retracted


def test_latest_judgment_is_what_undo_would_take_back_as_the_annotator_saw_it(db, settings, opts):
    """The side is given as shown (left/right), whatever the stored A/B; a later skip hides it (Undo then
    brings back the skipped pair); a retracted judgment gives way to the one before; others' are not theirs."""
    from annotate.queue import shown_a_on_left

    o = _no_mix(opts)
    with db.begin() as s:
        a, b = make_user(s, "a"), make_user(s, "b")
        make_comparisons(s, 6, priority=lambda i: i)
    t = utcnow()
    with db.begin() as s:
        assert judgments.latest_judgment(s, actor=a, now=t) is None
    sides = {}
    with db.begin() as s:
        for shown, strength, flags in (("left", 3, ["unsafe"]), ("right", None, [])):
            cid = queue.next_comparison(s, settings, o, actor=a, now=t).comparison_id
            sides[cid] = shown_a_on_left(s, s.scalar(select(Lease).where(Lease.comparison_id == cid,
                                                                         Lease.annotator_id == a.id)),
                                         settings.queue_seed)
            judgments.submit(s, settings, actor=a, comparison_id=cid, shown=shown, strength=strength,
                             rationale="why" if strength else None, flags=flags, now=t)
    first, second = sides
    assert sides == {first: True, second: False}  # deterministic: A shown on the right for `second`
    with db.read() as s:  # so B pressed on the right is stored as A
        assert s.scalar(select(Judgment.choice).where(Judgment.comparison_id == second)).value == "a"
    with db.read() as s:
        assert judgments.latest_judgment(s, actor=a, now=t) == judgments.Latest(second, "right", None, False, ())
        assert judgments.latest_judgment(s, actor=b, now=t) is None
    with db.begin() as s:
        judgments.undo_last_action(s, settings, actor=a, now=t)
    with db.read() as s:
        assert judgments.latest_judgment(s, actor=a, now=t) == judgments.Latest(first, "left", 3, True, ("unsafe",))
        assert judgments.latest_judgment(s, actor=a, now=t + timedelta(hours=13)) is None  # too old to undo
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=a, now=t).comparison_id == second
        judgments.submit(s, settings, actor=a, comparison_id=second, shown="tie", now=t)
        skipped = queue.next_comparison(s, settings, o, actor=a, now=t).comparison_id
        queue.skip(s, actor=a, comparison_id=skipped, now=t + timedelta(seconds=5))
    with db.read() as s:
        assert judgments.latest_judgment(s, actor=a, now=t + timedelta(seconds=6)) is None


def test_undone_skip_of_a_pair_others_filled_comes_back_when_it_has_room(db, settings, opts):
    o = _no_mix(opts)
    with db.begin() as s:
        a, b = make_user(s, "a"), make_user(s, "b")
        low, high = make_comparisons(s, 2, priority=lambda i: i)  # overlap 1
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=a).comparison_id == high
        queue.skip(s, actor=a, comparison_id=high)
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=b).comparison_id == high
        assert queue.next_comparison(s, settings, o, actor=a).comparison_id == low
    with db.begin() as s:
        undone = judgments.undo_last_action(s, settings, actor=a)
    assert (undone.comparison_id, undone.skip, undone.served) == (high, True, False)
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=a).comparison_id == low  # b holds `high`
        queue.skip(s, actor=b, comparison_id=high)
        judgments.submit(s, settings, actor=a, comparison_id=low, shown="tie")
    with db.begin() as s:
        assert queue.next_comparison(s, settings, o, actor=a).comparison_id == high


def test_refusals_never_say_reload(db, settings, opts):
    """A reload starts a new browser session, which is logged out: the messages the annotation page
    shows for a pair that is no longer theirs say what happens instead (the page moves on by itself)."""
    from annotate.errors import NotFound

    o = _no_mix(opts)
    with db.begin() as s:
        a = make_user(s, "a")
        make_comparisons(s, 2)
    with db.begin() as s:
        cid = queue.next_comparison(s, settings, o, actor=a).comparison_id
        queue.skip(s, actor=a, comparison_id=cid)
    with pytest.raises(QueueError) as refused, db.begin() as s:
        judgments.submit(s, settings, actor=a, comparison_id=cid, shown="left")
    with pytest.raises(NotFound) as not_found, db.begin() as s:
        queue.skip(s, actor=a, comparison_id=999)
    for message in (str(refused.value), str(not_found.value)):
        assert "not assigned to you" in message and "reload" not in message.lower(), message
        assert "next one" in message, message


def test_gold_pairs_are_mixed_in_at_rate(db, settings, opts):
    from dataclasses import replace
    o = replace(opts, gold_rate=0.3, probe_rate=0.0)
    with db.begin() as s:
        a = make_user(s, "a")
        make_comparisons(s, 60)
        gold = set(make_comparisons(s, 30, gold=True, start=1000))
    served_gold = 0
    for _ in range(40):
        with db.begin() as s:
            asg = queue.next_comparison(s, settings, o, actor=a)
            served_gold += asg.comparison_id in gold
            judgments.submit(s, settings, actor=a, comparison_id=asg.comparison_id, shown="left")
    assert 4 <= served_gold <= 22
    with db.read() as s:
        assert all(c.status is ComparisonStatus.open for c in s.scalars(select(Comparison).where(Comparison.is_gold)))


def test_probe_repeats_with_sides_swapped(db, settings, opts):
    from dataclasses import replace
    o = replace(opts, gold_rate=0.0, probe_rate=0.5)
    with db.begin() as s:
        a = make_user(s, "a")
        make_comparisons(s, 30)
    t = utcnow() - timedelta(hours=1)
    probes = 0
    for i in range(20):
        now = t + timedelta(minutes=5 * i)
        with db.begin() as s:
            asg = queue.next_comparison(s, settings, o, actor=a, now=now)
            if asg.is_probe:
                probes += 1
                orig = s.scalar(select(Judgment).where(Judgment.comparison_id == asg.comparison_id,
                                                       Judgment.is_probe.is_(False)))
                assert asg.a_on_left == (not orig.a_on_left)
            judgments.submit(s, settings, actor=a, comparison_id=asg.comparison_id, shown="left", now=now)
    assert probes >= 3
    with db.read() as s:
        # a probe never counts toward overlap and never completes or reopens anything
        assert all(c.judgment_count <= 1 for c in s.scalars(select(Comparison)))
        # and says what put it in front of the annotator: the probe rate, no model
        provenance = {(j.is_probe, j.acquisition_strategy, j.model_version_id, j.acquisition_score)
                      for j in s.scalars(select(Judgment))}
    assert provenance == {(True, "probe", None, None), (False, None, None, None)}


def test_deactivated_annotator_cannot_take_work(db, settings, opts):
    from annotate.accounts import set_active
    with db.begin() as s:
        a = make_user(s, "a")
        make_comparisons(s, 1)
        set_active(s, "a", False, system=True)
    with pytest.raises(PermissionDenied), db.begin() as s:
        queue.next_comparison(s, settings, opts, actor=a)


def test_queue_lookup_is_index_backed(db, settings):
    """The claim query walks ix_comparisons_queue instead of sorting the whole table."""
    from sqlalchemy.dialects import postgresql, sqlite

    with db.begin() as s:
        a = make_user(s, "a")
        make_comparisons(s, 300)
        dialect = s.bind.dialect.name
        query = queue.candidate_query(a.id, utcnow(), gold=False, dialect=dialect)
        if dialect == "postgresql":
            s.execute(__import__("sqlalchemy").text("SET LOCAL enable_seqscan = off"))
            sql = str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
            plan = "\n".join(r[0] for r in s.execute(__import__("sqlalchemy").text("EXPLAIN " + sql)))
        else:
            sql = str(query.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
            plan = "\n".join(str(r[-1]) for r in s.execute(__import__("sqlalchemy").text("EXPLAIN QUERY PLAN " + sql)))
    assert "ix_comparisons_queue" in plan, plan
    assert "TEMP B-TREE" not in plan.upper() and "Sort " not in plan, plan


def test_prompt_with_text_only_stores_sql_null_messages(db, settings):
    """Passing messages=None must store SQL NULL (not JSON 'null'), or the text-xor-messages check fails."""
    from annotate.models import Prompt

    with db.begin() as s:
        s.add(Prompt(content_hash="x", text="hello", messages=None, meta=None))
    with db.read() as s:
        row = s.scalar(select(Prompt))
        assert row.messages is None and not row.is_chat


def test_judged_today_counts_from_midnight_in_the_annotators_time_zone(db, settings, opts):
    """Judgments at 14:30 and 23:30 UTC on the 27th, counted at 00:30 UTC on the 28th: in UTC neither is
    today's; in Los Angeles (16:30 on the 27th) both are; in Tokyo (09:30 on the 28th) the first was made at
    23:30 on the 27th there and the second at 08:30 on the 28th, so one. Before, every annotator's day began
    at UTC midnight."""
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo

    from annotate.ui.context import zone

    o = _no_mix(opts)
    with db.begin() as s:
        a = make_user(s, "a")
        make_comparisons(s, 3)
    times = [datetime(2026, 11, 27, 14, 30, tzinfo=timezone.utc), datetime(2026, 11, 27, 23, 30, tzinfo=timezone.utc)]
    for when in times:
        with db.begin() as s:
            cid = queue.next_comparison(s, settings, o, actor=a, now=when).comparison_id
            judgments.submit(s, settings, actor=a, comparison_id=cid, shown="left", now=when)
    now = datetime(2026, 11, 28, 0, 30, tzinfo=timezone.utc)
    with db.read() as s:
        today = {name: judgments.progress(s, actor=a, now=now, tz=zone(name)).judged_today
                 for name in (None, "America/Los_Angeles", "Asia/Tokyo")}
    assert today == {None: 0, "America/Los_Angeles": 2, "Asia/Tokyo": 1}
    assert judgments.progress.__kwdefaults__["tz"] is timezone.utc
    assert zone("Asia/Tokyo") == ZoneInfo("Asia/Tokyo")
    for bad in ("", "Not/AZone", "/etc/passwd", "../../etc/passwd", "Europe/../../x"):
        assert zone(bad) is timezone.utc, bad
