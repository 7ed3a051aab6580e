"""Admin: one comparison with its texts, every judgment and rationale, gold marking, and retiring it."""

import pandas as pd
import streamlit as st
from sqlalchemy.exc import OperationalError

from annotate import dashboard, quality
from annotate.errors import PrefloopError
from annotate.ui import context, render

actor = context.require_admin_page()
settings, db = context.get_settings(), context.get_db()

st.title("Review a comparison")

comparison_id = st.number_input("Comparison id", min_value=1, step=1, value=None, key="review_id",
                                placeholder="e.g. a pair id from Model health or an export")
if comparison_id is None:
    st.info("Enter a comparison id to see its prompt, both responses and every judgment.")
    st.stop()
with context.stop_on_errors():
    with db.read() as session:
        rv = dashboard.review_comparison(session, actor=actor, comparison_id=int(comparison_id))

row = context.metric_row()
row.metric("Status", rv.status)
row.metric("Judgments / overlap", f"{rv.judgment_count} / {rv.overlap_target}")
row.metric("Gold", rv.gold_choice if rv.is_gold else "no")
row.metric("Model P(A)", "—" if rv.model_p_a is None else f"{rv.model_p_a:.2f}")
votes = rv.votes
row.metric("Votes a / b / tie / both bad", " / ".join(str(votes[c]) for c in quality.CHOICES))

with render.untrusted_area():  # model output cannot borrow the page's look (see render)
    st.subheader("Prompt", anchor=False)
    render.show_prompt(rv.prompt_text, rv.prompt_messages)
    left, right = st.columns(2)
    with left:
        st.markdown(f"**Response A** · {len(rv.response_a):,} characters"
                    + (f" · {render.safe_markdown(rv.generator_a)}" if rv.generator_a else ""))
        render.show_text(rv.response_a, height=render.RESPONSE_HEIGHT)
    with right:
        st.markdown(f"**Response B** · {len(rv.response_b):,} characters"
                    + (f" · {render.safe_markdown(rv.generator_b)}" if rv.generator_b else ""))
        render.show_text(rv.response_b, height=render.RESPONSE_HEIGHT)


def _who(j: dashboard.JudgmentView) -> str:
    """The annotator's username; for a judgment of no account its source, with the rater an import named."""
    if j.annotator:
        return j.annotator
    return f"({j.source}, rater {render.plain(j.rater)})" if j.rater else f"({j.source})"


st.subheader("Judgments")
if rv.judgments:
    frame = pd.DataFrame([{
        "id": j.id, "annotator": _who(j), "choice": j.choice, "strength": j.strength,
        "shown": None if j.a_on_left is None else ("A left" if j.a_on_left else "A right"),
        "time_s": None if j.time_spent_ms is None else j.time_spent_ms / 1000, "probe": j.is_probe,
        "gold": j.was_gold, "state": j.state, "flags": ", ".join(j.flags), "created_at": context.local_time(j.created_at),
    } for j in rv.judgments])
    st.dataframe(frame, hide_index=True, key="review_judgments")
    context.times_caption()
    for j in rv.judgments:
        if j.rationale:
            with st.container(border=True):
                st.caption(f"{render.safe_markdown(_who(j))} chose **{j.choice}** ({j.state})")
                render.show_text(j.rationale)
else:
    st.info("Nobody has judged this pair yet.")

st.subheader("Gold")


def _state(is_gold: bool, answer: str | None, retired: bool) -> tuple:
    """What the gold and retire buttons change, for telling which confirmation still holds."""
    return rv.id, is_gold, answer if is_gold else None, retired


NOW = _state(rv.is_gold, rv.gold_choice, rv.status == "retired")


def _run(change, after: tuple, success: str) -> None:
    def work(session):
        change(session)
        # Noted before the commit: a click that arrives meanwhile stops this run at its next use of
        # st.session_state, and a note written after the commit was lost with the run while the change was
        # not. Checked against the pair's state when shown, so a refused change confirms nothing.
        st.session_state["review_done"] = (after, success)

    try:
        db.transact(work)
    except (PrefloopError, OperationalError) as exc:
        st.error(context.not_saved_message(exc))
        return
    st.rerun()


with st.form("gold_form"):
    # No answer is preselected for a pair that is not gold: with "a" chosen for the admin, Mark as gold
    # made "a" the answer every annotator's gold accuracy is scored against, chosen or not. Keyed by the
    # pair, so the answer chosen for one pair is not carried over to the next id typed in.
    # ... nor from the pair's gold answer before an unmark: the box is a new one when the answer changes, so a
    # click on Mark as gold right after Unmark gold (the second of a double click) cannot mark it again.
    choice = st.selectbox("Known answer", quality.CHOICES, key=f"gold_choice_{rv.id}_{rv.gold_choice or '-'}",
                          placeholder="Choose the known answer",
                          index=quality.CHOICES.index(rv.gold_choice) if rv.gold_choice else None)
    mark = st.form_submit_button("Mark as gold" if not rv.is_gold else "Change the gold answer", type="primary")
if mark and choice is None:
    st.error("Choose the known answer first.")
elif mark:
    _run(lambda s: dashboard.mark_gold(s, actor=actor, comparison_id=rv.id, choice=choice),
         _state(True, choice, NOW[3]), f"Comparison {rv.id} is a gold pair with answer {choice}.")
if rv.is_gold and st.button("Unmark gold", key="unmark_gold"):
    _run(lambda s: dashboard.unmark_gold(s, settings, actor=actor, comparison_id=rv.id),
         _state(False, None, NOW[3]), f"Comparison {rv.id} is no longer a gold pair.")

st.subheader("Retire")
if rv.status == "retired":
    st.info("Retired: nobody is served this pair, and its judgments are left out of training and of the "
            "preference exports (the raw judgment exports keep them, comparison_status = retired).",
            icon=":material/archive:")
    if st.button("Reopen", key="reopen", icon=":material/unarchive:"):
        _run(lambda s: dashboard.reopen(s, settings, actor=actor, comparison_id=rv.id),
             _state(rv.is_gold, rv.gold_choice, False), f"Comparison {rv.id} is back in the campaign.")
else:
    # In a popover, as Deactivate is on the Users page: the confirming click is not where Reopen appears.
    with st.popover("Retire…", icon=":material/archive:"):
        st.markdown("Take this pair out of the campaign (broken text, a prompt that should not be there): "
                    "nobody is served it again, and its judgments are kept but left out of training and of "
                    "the preference exports. Reopen undoes it.")
        if st.button(f"Retire comparison {rv.id}", key="retire", type="primary"):
            _run(lambda s: dashboard.retire(s, actor=actor, comparison_id=rv.id),
                 _state(rv.is_gold, rv.gold_choice, True), f"Comparison {rv.id} is retired.")

# What the last gold action did, with the state it left: (id, is gold, answer) and the message. Shown while
# this pair is on screen in that state, not once after the rerun: the second click of a double click lands
# after the action, often on something else that reruns the page, and a one-shot message was gone by then.
# Below the buttons: above them it pushed the form down after an unmark, and the second click of a double
# click on Unmark gold landed on Mark as gold, marking the pair again (chromium, 300 ms, under load).
done = st.session_state.get("review_done")
if done and done[0] == NOW:
    st.success(done[1], icon=":material/check:")
