"""AppTest tests of the annotators page: every rate shows what it rests on, and a flag says why."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from streamlit.testing.v1 import AppTest

from annotate.accounts import Actor
from annotate.models import Judgment, User, utcnow
from tests.factories import make_comparisons, make_user
from tests.ui.conftest import open_page

TIMEOUT = 60


def _table(at: AppTest):
    """The per-annotator table (its data, indexed by annotator) and the columns it shows, in order."""
    [element] = [e for e in at.dataframe if "majority_agreement" in e.value.columns]
    return element.value.set_index("annotator"), list(element.proto.column_order)


def _judge(app_db, annotator: Actor, cids, choices, *, gold: bool = False):
    now = utcnow() - timedelta(minutes=5)
    with app_db.begin() as s:
        for cid, choice in zip(cids, choices):
            s.add(Judgment(comparison_id=cid, annotator_id=annotator.id, choice=choice, a_on_left=True,
                           time_spent_ms=20_000, was_gold=gold, created_at=now))


def test_a_rate_over_three_judgments_shows_its_count_and_interval(app_db, people):
    """3 of 3 agreeing read "100%" with nothing to say it rests on three judgments."""
    annotator, admin = people
    with app_db.begin() as s:
        cids = make_comparisons(s, 3, overlap=2)
    _judge(app_db, annotator, cids, "aab")
    _judge(app_db, admin, cids, "aab")
    at = open_page(admin, "annotators.py", TIMEOUT)
    table, shown = _table(at)
    row = table.loc["ann"]
    assert (row["majority_agreement"], row["majority_n"], row["kappa_pairings"]) == (1.0, 3, 3)
    assert row["majority_interval"] == "44%–100%"
    for column in ("majority_agreement", "majority_interval", "majority_n", "kappa", "kappa_pairings",
                   "gold_accuracy", "gold_interval", "gold_n", "model_n", "flip_interval", "decisive_n", "active"):
        assert column in shown, column
    assert any("95% interval" in c.value for c in at.caption)


def test_five_gold_pairs_with_two_wrong_do_not_flag_anyone(app_db, people):
    """Right on 85 % of gold pairs, one scores 3 of 5 about one time in six: that was a "low gold accuracy" flag."""
    annotator, admin = people
    with app_db.begin() as s:
        gold = make_comparisons(s, 5, gold=True)  # gold answer "a"
    _judge(app_db, annotator, gold, "aaabb", gold=True)
    at = open_page(admin, "annotators.py", TIMEOUT)
    table, _ = _table(at)
    assert table.loc["ann", "gold_accuracy"] == 0.6 and table.loc["ann", "gold_interval"] == "23%–88%"
    assert not at.warning
    assert [s.value for s in at.success] == ["Nobody is flagged in this period."]


def test_a_flag_says_what_it_rests_on_and_who_is_deactivated(app_db, people):
    annotator, admin = people
    with app_db.begin() as s:
        gold = make_comparisons(s, 12, gold=True)
    _judge(app_db, annotator, gold, "aaa" + "b" * 9, gold=True)
    with app_db.begin() as s:
        s.execute(update(User).where(User.id == annotator.id).values(active=False))
        assert s.scalar(select(User.active).where(User.id == annotator.id)) is False
    at = open_page(admin, "annotators.py", TIMEOUT)
    [warning] = [w.value for w in at.warning]
    assert warning == "**ann** (deactivated): low gold accuracy (3 of 12 correct: 25%, 95% interval 9%–53%)"
    table, _ = _table(at)
    assert not table.loc["ann", "active"]


def _kappa_heatmap(at: AppTest) -> dict:
    import json

    [chart] = [spec for spec in (json.loads(c.proto.spec) for c in at.get("vega_lite_chart"))
               if any(layer.get("mark", {}).get("type") == "rect" and "kappa" in str(layer.get("encoding"))
                      for layer in spec.get("layer", [spec]))]
    return chart


def _annotators_sharing_pairs(app_db, people, n_more: int) -> None:
    annotator, admin = people
    with app_db.begin() as s:
        cids = make_comparisons(s, 4, overlap=2 + n_more)
        others = [make_user(s, f"a{i:02d}") for i in range(n_more)]
    for who in (annotator, admin, *others):
        _judge(app_db, who, cids, "abab" if who.id % 2 else "abba")


def test_the_kappa_heatmap_has_square_cells_of_a_readable_size(app_db, people):
    """With two annotators the heatmap was stretched to the column's width: two bars 8 px tall, their labels
    over the bars. Its cells are square now, a fixed step per annotator, and it keeps its own width."""
    _annotators_sharing_pairs(app_db, people, 0)
    at = open_page(people[1], "annotators.py", TIMEOUT)
    chart = _kappa_heatmap(at)
    assert chart["width"] == chart["height"] == {"step": 56}
    [element] = [c for c in at.get("vega_lite_chart") if "kappa" in c.proto.spec and '"step"' in c.proto.spec]
    assert not element.proto.use_container_width
    names = chart["layer"][0]["encoding"]["y"]["scale"]["domain"]
    assert names == chart["layer"][0]["encoding"]["x"]["scale"]["domain"] == ["ann", "boss"]
    assert any(layer["mark"]["type"] == "text" for layer in chart["layer"])  # the κ in each cell


def test_the_kappa_heatmap_shrinks_its_cells_for_many_annotators(app_db, people):
    _annotators_sharing_pairs(app_db, people, 28)  # 30 annotators: 280 px / 30 = 9 px a cell
    chart = _kappa_heatmap(open_page(people[1], "annotators.py", TIMEOUT))
    assert chart["width"] == chart["height"] == {"step": 9}
    assert "layer" not in chart or all(layer["mark"]["type"] == "rect" for layer in chart["layer"])


def _import_votes(app_db, rows: list[dict]) -> None:
    import json

    from annotate import ingest
    from annotate.settings import load_settings

    data = "\n".join(json.dumps(r) for r in rows).encode() + b"\n"
    with app_db.begin() as session:
        ingest.import_file(session, load_settings(), data, filename="votes.jsonl", system=True, overlap=3)


def test_imported_votes_are_named_as_not_counted_here(app_db, people):
    """195 votes imported from 7 raters left the page at "No judgments in this period", α "—" and "No two
    annotators share a comparison yet", without a word: a caption says how many there are and where they count."""
    _, admin = people
    at = open_page(admin, "annotators.py", TIMEOUT)
    assert not [c.value for c in at.caption if "imported" in c.value]  # nothing imported: nothing said

    pair = {"prompt": "q", "response_a": "better", "response_b": "worse"}
    _import_votes(app_db, [{**pair, "winner": w, "annotator": r} for r, w in (("r1", "a"), ("r2", "a"), ("r3", "b"))]
                  + [{"prompt": "q2", "response_a": "x", "response_b": "y", "winner": "b"}])
    at.button(key="annotators_refresh").click().run()  # the figures are cached for a minute
    [caption] = [c.value for c in at.caption if "imported" in c.value]
    assert caption.startswith(":material/info: 4 imported judgments (3 of them from 3 named raters) are not in "
                              "these figures, which cover annotators' own judgments only."), caption
    assert "preference exports" in caption and "`external_annotator`" in caption
    assert [i.value for i in at.info][0] == "No judgments in this period."
