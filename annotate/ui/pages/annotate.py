"""The annotation page: one pair, A on the left and B on the right, one key press per judgment.

Keys: A left better, B right better, T tie, X both bad, S skip, U undo the last judgment or skip.
Every action runs in a button callback, so the next pair is drawn by the
same rerun that recorded the judgment.

A press acts only on the pair on screen. The judge and skip buttons are keyed by
their pair, because Streamlit calls a button's callback with the arguments its
key was registered with in the latest run: with one key for every pair, a key
pressed twice before the next pair arrived judged that next pair unseen. And an
action clears the pair on screen until the next run shows one, so a second
press from the same render is ignored instead of warning that the pair is
"not assigned any more". Undo follows the same rule with a token per render:
its button is keyed by the render's token and used once, so U pressed twice
before the page re-renders undoes one action, not two; U pressed again once the
undone pair is shown undoes the action before it. A press that comes from the
render now on screen but less than ``MIN_SHOWN_S`` after the first run that drew its pair ended
is refused with a toast (a key pressed twice, the second press landing after the
next pair arrived).

Each press re-reads the session's user first (``_actor_now``), as the script
does: callbacks run before the script, so a press in a session idle past the
limit, or of an account deactivated meanwhile, acted before the run logged out.

Keys 1, 2, 3 choose a strength. Pressed just before a judgment key, both presses can reach the server
as one run, in which Streamlit calls the judge button's callback first: the judgment applies such a
press itself (``_strength_pressed_with``). Pressed at the same instant on a busy server, Streamlit can
drop the strength press altogether (the run it started is stopped for the judgment's before its
callback runs), so the page reads back from the database what the latest judgment saved.

The optional inputs (strength, rationale, flags) live in widgets keyed by their
pair, and Streamlit forgets a widget's value once a run does not draw it. So
the page keeps a copy of each pair's inputs while it is off screen (another
page visited, a pair undone in front of it) and of the inputs each judgment was
sent with, and gives them back when the pair returns; an undone pair comes
back as it was judged (a tie or both bad with no strength: it saves none). A
probe of a judged pair starts empty.
"""

import time

import streamlit as st
from sqlalchemy.exc import OperationalError, ProgrammingError

from annotate import campaign, judgments, queue
from annotate.errors import PrefloopError
from annotate.ui import context, render

TIMER_KEY = "pair_shown_at"
DRAWN_KEY = "pair_drawn"  # the pair whose first whole run has ended (its TIMER_KEY time set there)
ON_SCREEN_KEY = "pair_on_screen"  # the comparison the latest run showed; None once acted on
DRAFTS_KEY = "pair_drafts"  # comparison id -> its unsent optional inputs
SENT_KEY = "pair_sent_inputs"  # comparison id -> the optional inputs its judgment saved (for undo)
UNDO_SERIAL_KEY = "undo_serial"  # renders that drew the undo button so far
UNDO_ON_SCREEN_KEY = "undo_on_screen"  # the latest render's undo token; None once used
BACK_KEY = "pair_back"  # the comparison the latest undo brought back (seen before: no MIN_SHOWN_S)
STRENGTH_KEY = "pair_strength"  # {comparison id: strength or None} for the pair on screen (keys 1, 2, 3)
STRENGTH_PRESS_KEY = "strength_press"  # (comparison id, strength) whose button's callback ran in this run
# A judge or skip press that reaches the server sooner than this after its pair was first drawn is
# refused with a toast, and the pair stays: a key pressed twice, the second time just after the next
# pair arrived (say 300 ms apart, with the page back in 200 ms), would otherwise judge a pair the
# annotator never saw. No one reads two responses and decides in half a second, and a refused press is
# not lost: it is said, and pressing again records it. A pair brought back by undo was seen: exempt.
# (A comment, not a docstring: Streamlit's magic writes a bare string in a page onto the page.)
MIN_SHOWN_S = 0.5
# The pair on screen can change without an action of this session: judged, skipped or undone in another
# tab, or its lease lapsed and others filled it. The run that notices says so above the new pair, and a
# judge or skip press sooner than this after it was drawn is refused: it was most likely meant for the
# pair that went (a strength key there had swapped the pair unnoticed, and a judgment key 0.8 s later
# judged the new one).
SWAP_MIN_SHOWN_S = 2.0
SWAPPED_KEY = "pair_swapped"  # the pair that replaced another without an action of this session
TOLD_KEY = "pair_told_gone"  # a pair whose press was refused with a toast (which said it went)
_KEPT = 20  # pairs remembered in each
# The shortcuts ignore keys typed into a text box, and neither Esc nor Enter leaves it.
TYPING_HINT = "The keys do nothing while you type in this box: press **Tab** to leave it, then judge with a key."
ACTIONS = (
    # (shown, label, shortcut, button type)
    ("left", "A is better", "A", "primary"),
    ("right", "B is better", "B", "primary"),
    ("tie", "Tie", "T", "secondary"),
    ("both_bad", "Both bad", "X", "secondary"),
)


def _timers() -> dict[int, float]:
    return st.session_state.setdefault(TIMER_KEY, {})


def _kept(key: str) -> dict[int, dict]:
    return st.session_state.setdefault(key, {})


def _keep(key: str, comparison_id: int, inputs: dict) -> None:
    kept = _kept(key)
    kept.pop(comparison_id, None)
    if any(inputs.values()):
        kept[comparison_id] = inputs
    for old in list(kept)[:-_KEPT]:
        del kept[old]


def _input_keys(comparison_id: int) -> dict[str, str]:
    """The widget keys of the pair's rationale and flags (its strength is kept under STRENGTH_KEY)."""
    return {name: f"{name}_{comparison_id}" for name in ("rationale", "flags")}


def _strengths() -> dict[int, int | None]:
    return st.session_state.setdefault(STRENGTH_KEY, {})


def _inputs(comparison_id: int) -> dict:
    """The optional inputs this session holds for the pair: strength, rationale, flags."""
    return {"strength": _strengths().get(comparison_id),
            **{name: st.session_state.get(key) for name, key in _input_keys(comparison_id).items()}}


def _strength_button(comparison_id: int, strength: int) -> str:
    return f"set_strength_{strength}_{comparison_id}"


def _set_strength(comparison_id: int, strength: int) -> None:
    """Keys 1, 2, 3: choose that strength for the pair on screen, or clear it if it was chosen already.
    A press from an earlier render (the pair has gone) changes nothing."""
    if _is_on_screen(comparison_id) and st.session_state.get(STRENGTH_PRESS_KEY) != (comparison_id, strength):
        chosen = _strengths()
        chosen[comparison_id] = None if chosen.get(comparison_id) == strength else strength
        st.session_state[STRENGTH_PRESS_KEY] = (comparison_id, strength)  # this run's press is applied


def _strength_pressed_with(comparison_id: int) -> None:
    """Apply a strength key the server took in the same run as a judgment, before the judgment reads it.

    2 then A with no pause can reach the server as one run with both buttons pressed, and Streamlit then
    calls the judge button's callback first (its button is drawn first): the judgment would go without
    the strength, and the strength's callback would then find the pair gone. So the judgment applies it
    here, and the strength's callback, if it comes after, sees STRENGTH_PRESS_KEY and leaves it be."""
    for value in judgments.STRENGTHS:
        if st.session_state.get(_strength_button(comparison_id, value)):  # pressed in this run
            _set_strength(comparison_id, value)


def _is_on_screen(comparison_id: int) -> bool:
    return st.session_state.get(ON_SCREEN_KEY) == comparison_id


def _not_done(exc: Exception) -> str:
    """The toast for an action that did not happen (a database error after retries says so plainly)."""
    return str(exc) if isinstance(exc, PrefloopError) else context.NOT_SAVED


def _once(key: str, token, write) -> tuple[bool, object]:
    """Run ``write(session)`` once for what the latest render showed under ``key`` (``token``).

    ``(done, result)``; not done for a press from an earlier render, a repeated one, or a
    write that was not saved (toasted). The token is cleared before the write: Streamlit
    may end a callback at any session-state access when the next press arrives, so
    nothing after the commit is sure to run.
    """
    if st.session_state.get(key) != token:  # a press from an earlier render, or a repeated one
        return False, None
    st.session_state[key] = None
    try:
        result = context.get_db().transact(write)
    except (PrefloopError, OperationalError) as exc:
        st.session_state[key] = token
        if key == ON_SCREEN_KEY:
            st.session_state[TOLD_KEY] = token
        st.toast(_not_done(exc), icon=":material/warning:")
        return False, None
    return True, result


def _actor_now():
    """The actor a press acts for, re-read as the script does, or None if it must not act: a press in a
    session idle past PREFLOOP_SESSION_IDLE_MINUTES (or of an account deactivated meanwhile) recorded
    its action, and only the run after it logged out. Callbacks run before the script, so they check
    themselves; the run that follows shows the login page and says why."""
    try:
        return context.refresh_actor()
    except (OperationalError, ProgrammingError):
        st.toast(context.NOT_SAVED, icon=":material/warning:")
        return None


def _too_soon(comparison_id: int) -> bool:
    """Whether a press on the pair on screen came less than MIN_SHOWN_S after it was drawn (toasted)."""
    started = _timers().get(comparison_id)
    if started is None or st.session_state.pop(BACK_KEY, None) == comparison_id:
        return False
    shown_s = time.monotonic() - started
    swapped = st.session_state.get(SWAPPED_KEY) == comparison_id
    if shown_s >= (SWAP_MIN_SHOWN_S if swapped else MIN_SHOWN_S):
        return False
    why = ("it replaced the pair you had, which went elsewhere" if swapped else "a key pressed twice?")
    st.toast(f"Not saved: that key came {max(shown_s, 0) * 1000:.0f} ms after this pair appeared ({why}). "
             "Read it, then press again.", icon=":material/front_hand:")
    return True


def _act(comparison_id: int, write) -> tuple[bool, object]:
    """Run ``write(session)`` for the pair on screen, once: ``(done, its result)``; not done if it was not
    on screen or not saved."""
    done, result = _once(ON_SCREEN_KEY, comparison_id, write)
    if done:
        _timers().pop(comparison_id, None)
    return done, result


def _judge(comparison_id: int, shown: str, a_on_left: bool | None = None) -> None:
    actor, settings = _actor_now(), context.get_settings()
    if actor is None or (_is_on_screen(comparison_id) and _too_soon(comparison_id)):
        return
    if _is_on_screen(comparison_id):
        _strength_pressed_with(comparison_id)
    inputs = _inputs(comparison_id)
    strength = inputs["strength"] if shown in ("left", "right") else None
    rationale = inputs["rationale"] or None
    flags = list(inputs["flags"] or ())
    started = _timers().get(comparison_id)
    elapsed_ms = int((time.monotonic() - started) * 1000) if started is not None else None
    if _is_on_screen(comparison_id):  # before the write: nothing after it is sure to run
        _kept(DRAFTS_KEY).pop(comparison_id, None)
        # What is saved, for undo: a strength chosen before a tie or both bad is not, and brought back
        # it would go with the next A or B, a strength never chosen for it.
        _keep(SENT_KEY, comparison_id, {**inputs, "strength": strength})
    done, submitted = _act(comparison_id, lambda session: judgments.submit(
        session, settings, actor=actor, comparison_id=comparison_id, shown=shown, strength=strength,
        rationale=rationale, flags=flags, time_spent_ms=elapsed_ms, a_on_left_shown=a_on_left))
    if done and submitted.extra:
        st.toast(context.EXTRA_VOTE, icon=":material/info:")


def _skip(comparison_id: int) -> None:
    actor = _actor_now()
    if actor is None or (_is_on_screen(comparison_id) and _too_soon(comparison_id)):
        return
    if _is_on_screen(comparison_id):
        _kept(DRAFTS_KEY).pop(comparison_id, None)
    if _act(comparison_id, lambda session: queue.skip(session, actor=actor, comparison_id=comparison_id))[0]:
        st.toast("Skipped: you will not see this pair again (Undo brings it back).", icon=":material/skip_next:")


def _undo(token: int) -> None:
    """Undo the latest action, once per render: ``token`` is the render's the press came from."""
    actor, settings = _actor_now(), context.get_settings()
    if actor is None:
        return
    done, undone = _once(UNDO_ON_SCREEN_KEY, token,
                         lambda session: judgments.undo_last_action(session, settings, actor=actor))
    if not done:
        return
    if undone is None:
        st.toast("Nothing recent to undo.", icon=":material/info:")
        return
    comparison_id = undone.comparison_id
    _timers().pop(comparison_id, None)
    st.session_state[BACK_KEY] = comparison_id
    if undone.skip:
        st.toast("Skip undone: here is that pair again." if undone.served else
                 "Skip undone. Others are judging that pair right now; it comes back to you if they leave room.",
                 icon=":material/undo:")
        return
    if not undone.served:
        st.session_state.pop(BACK_KEY, None)
        _kept(SENT_KEY).pop(comparison_id, None)
        st.toast("Your last judgment was withdrawn. An admin has retired that pair since, so it is not shown "
                 "again.", icon=":material/undo:")
        return
    # Shown again as it was judged: as sent from this session, else as stored (another tab, a new log-in).
    sent = _kept(SENT_KEY).pop(comparison_id, None)
    _strengths().pop(comparison_id, None)  # restored below, like the widgets' values
    _keep(DRAFTS_KEY, comparison_id, sent if sent is not None else
          {"strength": undone.strength, "rationale": undone.rationale, "flags": list(undone.flags)})
    st.toast("Your last judgment was withdrawn; judge that pair again.", icon=":material/undo:")


def _undo_button(column, *, disabled: bool = False) -> None:
    """The undo button, keyed by a new token each render (see the module docstring)."""
    token = st.session_state[UNDO_SERIAL_KEY] = st.session_state.get(UNDO_SERIAL_KEY, 0) + 1
    st.session_state[UNDO_ON_SCREEN_KEY] = token
    column.button("Undo last", key=f"undo_{token}", shortcut="U", on_click=_undo, args=(token,),
                  icon=":material/undo:", width="stretch", disabled=disabled)


# Closing the dialog (Esc, the cross, a click beside it) runs the page again, with the keys live again: while
# it is open the pair's buttons are disabled, so a key pressed while reading the guidelines judges nothing.
@st.dialog("Guidelines", width="large", on_dismiss="rerun")
def _guidelines(text: str) -> None:
    """Key G: the guidelines over the pair, which stays as it was (Esc or the cross closes them)."""
    st.markdown(render.safe_markdown(text), unsafe_allow_html=False)  # no remote images
    st.page_link("annotate/ui/pages/guidelines.py", label="Open the guidelines page", icon=":material/open_in_new:")


def _saved_line(latest: judgments.Latest) -> str:
    """What the latest judgment recorded, read back from the database: a strength key Streamlit dropped
    (see the README) or a key that judged the other side shows here, and U takes it back."""
    label = next(label for shown, label, _, _ in ACTIONS if shown == latest.shown)
    extras = [f"**{label}**" + (f" ({judgments.STRENGTHS[latest.strength]})" if latest.strength else "")]
    if latest.has_rationale:
        extras.append("with a rationale")
    if latest.flags:
        extras.append("flagged " + ", ".join(judgments.FLAG_LABELS.get(f, f) for f in latest.flags))
    return f":material/check_circle: Last saved: pair #{latest.comparison_id}, {', '.join(extras)}. **U** takes it back."


def _is_long(text: str) -> bool:
    return len(text) > 900 or text.count("\n") > 14


st.session_state.pop(STRENGTH_PRESS_KEY, None)  # the strength presses this run's callbacks took are done
actor = context.require_login()
settings, db = context.get_settings(), context.get_db()


def _load(session):
    """What the page shows: run again by ``transact`` when PostgreSQL picked it as a deadlock victim."""
    options = campaign.get_options(session, settings)
    return (options, queue.next_comparison(session, settings, options, actor=actor),
            judgments.progress(session, actor=actor, tz=_zone), judgments.latest_judgment(session, actor=actor))


_zone = context.browser_zone()


with context.stop_on_errors():
    options, assignment, progress, latest = db.transact(_load)

# A row that wraps in a narrow window, so the Guidelines button keeps its whole label.
with st.container(horizontal=True, vertical_alignment="bottom", gap="medium"):
    st.header("Which response is better?", anchor=False, width="content")
    with st.container(width="stretch"):
        # Side by side in a narrow window too (st.columns stacks them there, pushing the pair down).
        with st.container(horizontal=True, gap="medium"):
            st.metric("Judged today", progress.judged_today,
                      help=f"Since midnight in your browser's time zone ({_zone}).")
            st.metric("Remaining", progress.remaining)
        done = progress.judged_total + progress.remaining
        st.progress(progress.judged_total / done if done else 1.0)
    show_guidelines = st.button("Guidelines", key="show_guidelines", shortcut="G", icon=":material/menu_book:",
                                width="content", help="The campaign's guidelines, over this pair (Esc closes them).")
if show_guidelines:
    _guidelines(options.guidelines)

if assignment is None:
    # Not "reload the page": a reload starts a new browser session, which is logged out.
    # "Remaining" counts open pairs this annotator has not judged or skipped; with none to serve,
    # those are on others' screens (their leases fill the pairs' overlap).
    n = progress.remaining
    held = (f" The {n} remaining {'pair is' if n == 1 else 'pairs are'} on other annotators' screens, and "
            f"{'comes' if n == 1 else 'one comes'} to you if they leave {'it' if n == 1 else 'one'} unjudged."
            if n else "")
    st.success("No more pairs for you right now. Thank you! New pairs appear when an admin imports more "
               f"or when others release theirs: check again later.{held}", icon=":material/task_alt:")
    st.session_state[ON_SCREEN_KEY] = None
    again, undo = st.columns(2, width=420)
    again.button("Check for new pairs", key="check_again", icon=":material/refresh:", width="stretch")
    _undo_button(undo, disabled=show_guidelines)
    if latest is not None:
        st.caption(_saved_line(latest))
    st.stop()

cid = assignment.comparison_id
timers = _timers()
for stale in [k for k in timers if k != cid]:  # pairs that left the screen without an action
    del timers[stale]
timers.setdefault(cid, time.monotonic())
# The latest run showed another pair, and no action of this session took it away (an action clears
# ON_SCREEN_KEY; an undo here sets BACK_KEY to the pair it brought back).
gone, told = st.session_state.get(ON_SCREEN_KEY), st.session_state.pop(TOLD_KEY, None)
if gone is not None and gone != cid and st.session_state.get(BACK_KEY) != cid:
    st.session_state[SWAPPED_KEY] = cid
    if told != gone:  # a press on it was refused in this run, and its toast said why
        st.warning(f"Pair #{gone} is no longer yours: it was judged, skipped or undone in another tab, or "
                   "others took it while you were away. **This is another pair**; a key pressed in the next "
                   f"{SWAP_MIN_SHOWN_S:g} seconds is not saved.", icon=":material/swap_horiz:")
elif st.session_state.get(SWAPPED_KEY) != cid:
    st.session_state.pop(SWAPPED_KEY, None)
st.session_state[ON_SCREEN_KEY] = cid

st.caption(f"Pair #{cid} · keys: **A** left better · **B** right better · **T** tie · **X** both bad · "
           "**S** skip · **U** undo last · **1**/**2**/**3** how much better")
with render.untrusted_area():
    with st.container(border=True):
        st.markdown("**Prompt**")
        render.show_prompt(assignment.prompt_text, assignment.prompt_messages)
    col_a, col_b = st.columns(2)
    for column, label, text in ((col_a, "A", assignment.left_text), (col_b, "B", assignment.right_text)):
        with column:
            st.subheader(f"Response {label}", anchor=False)
            render.show_text(text, height=render.RESPONSE_HEIGHT if _is_long(text) else None)

with st.container(horizontal=True):  # wraps onto a second row in a narrow window, labels whole
    for shown, label, key, kind in ACTIONS:
        st.button(label, key=f"judge_{shown}_{cid}", shortcut=key, type=kind, on_click=_judge,
                  args=(cid, shown, assignment.a_on_left), width="stretch", disabled=show_guidelines)
    st.button("Skip", key=f"skip_{cid}", shortcut="S", on_click=_skip, args=(cid,), icon=":material/skip_next:",
              width="stretch", disabled=show_guidelines)
    _undo_button(st, disabled=show_guidelines)
if latest is not None and latest.comparison_id != cid:
    st.caption(_saved_line(latest))

keys = _input_keys(cid)
chosen = _strengths()
for gone in [k for k in chosen if k != cid]:  # as Streamlit forgets the widgets of a pair no longer drawn
    del chosen[gone]
draft = _kept(DRAFTS_KEY).get(cid, {})
if cid not in chosen and draft.get("strength"):  # present as None once cleared: not brought back
    chosen[cid] = draft["strength"]
for name, key in keys.items():
    if key not in st.session_state and draft.get(name):  # its widget was not drawn by the last run
        st.session_state[key] = draft[name]
strength = chosen.get(cid)
# Buttons, not a segmented control, so that a key chooses the strength: 1, 2 or 3, then A or B.
with st.container(horizontal=True, vertical_alignment="center", gap="small"):
    st.markdown("How much better? *(optional: a key, then **A** or **B**; again to clear)*", width="content")
    for value, label in judgments.STRENGTHS.items():
        st.button(label.capitalize(), key=_strength_button(cid, value), shortcut=str(value),
                  type="primary" if strength == value else "secondary", on_click=_set_strength,
                  args=(cid, value), help="Ignored for a tie or both bad.", disabled=show_guidelines)
with st.expander("Optional: rationale, flags", expanded=False):
    rationale = st.text_input("Rationale", key=keys["rationale"], max_chars=judgments.MAX_RATIONALE_CHARS,
                              placeholder="Why? (optional)")
    st.caption(TYPING_HINT)
    flags = st.pills("Flags", options=list(judgments.FLAGS), selection_mode="multi",
                     format_func=judgments.FLAG_LABELS.get, key=keys["flags"])
_keep(DRAFTS_KEY, cid, {"strength": strength, "rationale": rationale, "flags": flags})

# The pair counts as shown from the end of the first run that drew all of it, not from when that run began
# to: on a busy server the rest of the run (texts, buttons) used up MIN_SHOWN_S before the browser had the
# pair, and a key pressed twice 350 ms apart judged it unseen (794 ms counted; annotator-team dogfood run on
# 2 cores). A run stopped before here (by a press) leaves the time it was first drawn.
if st.session_state.get(DRAWN_KEY) != cid:
    st.session_state[DRAWN_KEY] = cid
    timers[cid] = time.monotonic()
