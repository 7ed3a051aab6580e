"""AppTest tests of the router and the pages against a temporary SQLite file."""

from __future__ import annotations

import ast
import io
import json
import re
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from annotate import accounts, campaign, judgments
from annotate.ui import nav
from annotate.accounts import Actor
from annotate.errors import PermissionDenied
from annotate.models import Choice, Judgment, JudgmentState, Lease, Role, User
from annotate.settings import Settings, load_settings
from tests.factories import PASSWORD, make_comparisons
from tests.ui.conftest import APP, PAGES

TIMEOUT = 30
ANNOTATOR_FILES = {"login.py", "annotate.py", "guidelines.py"}
ADMIN_PAGES = sorted(p.name for p in PAGES.glob("*.py") if p.name not in ANNOTATOR_FILES)
"""Every other page file: each must guard itself (a hand-written list had left one out)."""


def test_every_admin_page_file_is_in_the_admin_menu():
    assert ADMIN_PAGES == sorted(spec.file for spec in nav.ADMIN_PAGES)


def _first_statement(path: Path) -> str:
    """A page's first top-level statement that does something: not an import, a definition, its docstring
    or a constant (an UPPER_CASE name) assigned."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and all(
                isinstance(t, ast.Name) and t.id.isupper() for t in targets):
            continue
        return ast.unparse(node)
    return ""


@pytest.mark.parametrize("name", ADMIN_PAGES)
def test_admin_pages_check_the_role_before_anything_else(name):
    """The page's own guard, first: the service layer refuses annotators too, so the page tests below
    would not notice a guard taken away, and a page reading something unguarded would show it."""
    assert _first_statement(PAGES / name) == "actor = context.require_admin_page()"


def _app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


def _login(at: AppTest, username: str, password: str = PASSWORD) -> AppTest:
    at.text_input(key="login_username").input(username)
    next(t for t in at.text_input if t.label == "Password").input(password)
    at.button[0].click()
    at.run()
    assert not at.exception, at.exception
    return at


def _annotating(app_db, people, n_pairs: int) -> tuple[AppTest, Actor]:
    """``n_pairs`` open pairs and ``ann`` logged in on the annotation page: ``(app, ann)``."""
    annotator, _ = people
    with app_db.begin() as session:
        make_comparisons(session, n_pairs)
    return _login(_app(), "ann"), annotator


def _page(name: str) -> str:
    return str(PAGES / name)


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def _texts(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown]


def _shown_pair(at: AppTest, app_db, actor: Actor) -> tuple[int, bool]:
    """The comparison on screen (from the page's "Pair #id" caption) and whether A is on its left."""
    from annotate.queue import shown_a_on_left

    [cid] = [int(c.value.split("#")[1].split()[0]) for c in at.caption if c.value.startswith("Pair #")]
    with app_db.read() as session:
        lease = session.scalar(select(Lease).where(Lease.annotator_id == actor.id, Lease.comparison_id == cid))
        return cid, shown_a_on_left(session, lease, Settings.queue_seed)


def _press(at: AppTest, action: str, *, shown_s: float = 60.0):
    """The on-screen pair's button for ``action`` (judge_left, judge_right, judge_tie, judge_both_bad, skip):
    those keys end in the pair's id. The pair counts as drawn ``shown_s`` seconds before the press (a
    press within ``MIN_SHOWN_S`` of the pair's first drawing is refused)."""
    [button] = [b for b in at.button if b.key and re.fullmatch(rf"{action}_\d+", b.key)]
    timers = at.session_state["pair_shown_at"]
    for cid in timers:
        timers[cid] = time.monotonic() - shown_s
    return button


def _choose_strength(at: AppTest, cid: int, strength: int) -> None:
    """Press the strength button (key 1, 2 or 3) of pair ``cid`` and let the page run."""
    at.button(key=f"set_strength_{strength}_{cid}").click().run()


def _strength_shown(at: AppTest, cid: int) -> int | None:
    """The strength whose button the page draws as chosen (primary), or None."""
    chosen = [value for value in judgments.STRENGTHS if at.button(key=f"set_strength_{value}_{cid}").proto.type
              == "primary"]
    assert len(chosen) <= 1, chosen
    return chosen[0] if chosen else None


def _undo_button(at: AppTest):
    """The latest render's undo button (its key changes every render)."""
    [button] = [b for b in at.button if b.key and re.fullmatch(r"undo_\d+", b.key)]
    return button


def _judgments(app_db, actor: Actor) -> list[Judgment]:
    with app_db.read() as session:
        return list(session.scalars(select(Judgment).where(Judgment.annotator_id == actor.id)
                                    .order_by(Judgment.id)))


# --------------------------------------------------------------------------- login and navigation


def test_logged_out_sees_only_the_login_page(app_db, people):
    at = _app()
    assert [t.value for t in at.title] == ["prefloop"]
    with pytest.raises(ValueError, match="Known pages"):
        at.switch_page(_page("annotate.py"))
    password = next(t for t in at.text_input if t.label == "Password")
    assert password.proto.type == password.proto.PASSWORD


def test_login_failure_shows_the_message_then_throttles(app_db, people, monkeypatch):
    monkeypatch.setenv("PREFLOOP_LOGIN_MAX_FAILURES", "2")
    at = _app()
    _login(at, "ann", "wrong-password-1")
    assert _errors(at) == ["wrong username or password"]
    _login(at, "ann", "wrong-password-2")
    _login(at, "ann", PASSWORD)  # right password, but the account is throttled now
    assert any(e.startswith("too many failed attempts") for e in _errors(at)), _errors(at)
    assert not any("wrong-password" in text for text in _texts(at) + _errors(at))
    assert "actor" not in at.session_state
    assert [t.value for t in at.title] == ["prefloop"]


def test_bad_setting_and_unmigrated_database_show_a_message(app_db, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLOOP_OVERLAP", "0")
    at = _app()
    assert _errors(at) == ["PREFLOOP_OVERLAP must be from 1 to PREFLOOP_MAX_OVERLAP (3), not 0; raise "
                           "PREFLOOP_MAX_OVERLAP (at most 20) for more"]
    monkeypatch.delenv("PREFLOOP_OVERLAP")
    monkeypatch.setenv("PREFLOOP_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    at = _login(_app(), "ann")
    assert len(_errors(at)) == 1 and "prefloop db upgrade" in _errors(at)[0]


def test_login_success_shows_the_annotation_page(app_db, people):
    with app_db.begin() as session:
        make_comparisons(session, 2)
    at = _login(_app(), "ann")
    assert not _errors(at)
    assert [h.value for h in at.header] == ["Which response is better?"]
    assert at.session_state["actor"].username == "ann"
    assert any("Signed in as **ann**" in c.value for c in at.sidebar.caption)


def test_admin_lands_on_the_overview_and_holds_no_pair(app_db, people):
    """Logging in as admin must not lease a pair (nor count them as annotating)."""
    with app_db.begin() as session:
        make_comparisons(session, 2)
    at = _login(_app(), "boss")
    assert [t.value for t in at.title] == ["Campaign overview"]
    with app_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Lease)) == 0
    at.switch_page(_page("annotate.py"))
    at.run()
    assert [h.value for h in at.header] == ["Which response is better?"]  # one click away


def _registered_pages(at: AppTest) -> list[str]:
    """The page files this session registered (AppTest lists them when asked for an unknown page)."""
    with pytest.raises(ValueError, match="Known pages") as info:
        at.switch_page(_page("login.py"))  # never registered once logged in
    listed = re.search(r"Known pages: (\[.*\])", str(info.value)).group(1)
    return sorted(Path(p).name for p in ast.literal_eval(listed))


def test_annotator_never_registers_admin_pages(app_db, people):
    at = _login(_app(), "ann")
    registered = _registered_pages(at)
    assert [p for p in registered if p.endswith(".py")] == ["annotate.py", "guidelines.py"]
    # The rest are the hidden "for admins" notices at the admin pages' addresses (no page file behind them).
    assert sorted(p for p in registered if not p.endswith(".py")) == sorted(
        Path(spec.file).stem for spec in nav.ADMIN_PAGES)
    at.switch_page(_page("guidelines.py"))
    at.run()
    assert [t.value for t in at.title] == ["Guidelines"]
    # The demo guidelines have no title of their own: under the page's, "# Annotation guidelines" made two.
    assert not [m.value for m in at.markdown if m.value.startswith("# ")]
    for name in ADMIN_PAGES:
        with pytest.raises(ValueError, match="Known pages"):
            at.switch_page(_page(name))


_NOTICES = """
from pathlib import Path
import streamlit as st
from annotate.accounts import Actor
from annotate.models import Role
from annotate.ui import nav

pages = [p for section in nav.pages_for(Actor(id=7, username="ann", role=Role.annotator)).values() for p in section]
st.navigation(pages, position="sidebar")
st.session_state["pages"] = [(p.url_path, p.title, p.visibility, isinstance(p._page, Path)) for p in pages]
next(p for p in pages if p.url_path == "admin_export")._page()
"""


def test_an_annotator_at_an_admin_address_is_told_it_is_for_admins():
    """Hidden notices sit at the admin pages' addresses (no admin page file behind them) and say why."""
    at = AppTest.from_string(_NOTICES, default_timeout=TIMEOUT).run()
    assert not at.exception
    pages = at.session_state["pages"]
    assert [(u, t, f) for u, t, v, f in pages if v == "visible"] == [("", "Annotate", True),  # the default
                                                                      ("guidelines", "Guidelines", True)]
    notices = [(u, t, f) for u, t, v, f in pages if v == "hidden"]
    assert notices == [(Path(spec.file).stem, spec.title, False) for spec in nav.ADMIN_PAGES]
    assert [t.value for t in at.title] == ["Export"]
    assert [w.value for w in at.warning] == [
        "**Export** is for admins. You are signed in as **ann**, an annotator: ask an admin if you need it."]


def test_admin_registers_the_admin_pages(app_db, people):
    at = _login(_app(), "boss")
    assert set(_registered_pages(at)) >= {"annotate.py", "guidelines.py", *ADMIN_PAGES}


@pytest.mark.parametrize("name", ADMIN_PAGES)
def test_admin_pages_guard_themselves(app_db, people, name):
    annotator, _ = people
    at = AppTest.from_file(_page(name), default_timeout=TIMEOUT)
    at.session_state["actor"] = annotator
    at.run()
    assert not at.exception
    assert _errors(at) == ["this action needs the admin role"]
    assert not at.title and not at.dataframe and not at.file_uploader


@pytest.mark.parametrize("name", ADMIN_PAGES)
def test_admin_pages_guard_against_a_stale_admin_session(app_db, people, name):
    """A session that still believes it is admin is refused once the database says otherwise."""
    annotator, _ = people
    at = AppTest.from_file(_page(name), default_timeout=TIMEOUT)
    at.session_state["actor"] = Actor(id=annotator.id, username=annotator.username, role=Role.admin)
    at.run()
    assert _errors(at) == ["this action needs the admin role"]
    assert not at.title


def test_demoted_admin_loses_admin_pages(app_db, people):
    at = _login(_app(), "boss")
    at.switch_page(_page("admin_users.py"))
    at.run()
    assert [t.value for t in at.title] == ["Users"]
    with app_db.begin() as session:
        session.scalar(select(User).where(User.username == "boss")).role = Role.annotator
    at.run()
    assert not at.exception
    with pytest.raises(ValueError, match="Known pages"):
        at.switch_page(_page("admin_users.py"))


def test_deactivated_user_is_logged_out(app_db, people):
    at = _login(_app(), "ann")
    with app_db.begin() as session:
        accounts.set_active(session, "ann", False, system=True)
    at.run()
    assert [t.value for t in at.title] == ["prefloop"]
    assert [i.value for i in at.info] == ["You were logged out because this account is deactivated."]


def test_password_reset_logs_out_open_sessions(app_db, people):
    at = _login(_app(), "ann")
    at.run()  # a rerun re-reads the user from the database and must keep the login's credential
    assert at.session_state["actor"].credential is not None
    assert [t.value for t in at.title] != ["prefloop"]
    with app_db.begin() as session:
        accounts.reset_password(session, "ann", "a-new-password", system=True)
    at.run()
    assert [t.value for t in at.title] == ["prefloop"]
    assert "actor" not in at.session_state
    # Said, not just done: an admin resetting their own password lands here too.
    assert [i.value for i in at.info] == [
        "You were logged out because this account's password was changed: log in again."]
    _login(at, "ann", "a-new-password")
    assert at.session_state["actor"].username == "ann"


def test_idle_session_is_logged_out_at_its_next_interaction(app_db, people):
    at = _login(_app(), "ann")
    at.session_state["last_seen"] = time.time() - 7 * 3600  # under the default 8 hours: still logged in
    at.run()
    assert at.session_state["actor"].username == "ann"
    at.session_state["last_seen"] = time.time() - 9 * 3600
    at.run()
    assert [t.value for t in at.title] == ["prefloop"] and "actor" not in at.session_state
    assert [i.value for i in at.info] == ["You were logged out after 480 minutes without activity."]
    _login(at, "ann")
    assert at.session_state["actor"].username == "ann"


def test_logout_returns_to_login_and_gives_back_the_pairs_held(app_db, people):
    """The pair on screen (and any Undo set aside) was held from everyone until its lease lapsed, 15 minutes
    by default, after Log out (annotator-team dogfood run); the pairs skipped stay skipped."""
    at, annotator = _annotating(app_db, people, 3)
    first, _ = _shown_pair(at, app_db, annotator)
    _press(at, "skip").click().run()
    second, _ = _shown_pair(at, app_db, annotator)
    with app_db.read() as s:
        held = {(lease.comparison_id, lease.skipped) for lease in s.scalars(select(Lease))}
    assert held == {(first, True), (second, False)}
    at.sidebar.button(key="logout").click()
    at.run()
    assert [t.value for t in at.title] == ["prefloop"]
    assert "actor" not in at.session_state
    with app_db.read() as s:
        assert {(lease.comparison_id, lease.skipped) for lease in s.scalars(select(Lease))} == {(first, True)}
    _login(at, "ann")  # back: served again, the skipped pair still not
    assert _shown_pair(at, app_db, annotator)[0] != first


def _bare_strings(statements, top=True):
    """Line numbers of the string literals standing alone as statements (not the module docstring),
    outside functions and classes: the code Streamlit runs as the page script."""
    for i, node in enumerate(statements):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            if not (top and i == 0):
                yield node.lineno
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from _bare_strings(getattr(node, field, []) or [], top=False)


@pytest.mark.parametrize("script", ["streamlit_app.py", *sorted(p.name for p in PAGES.glob("*.py"))])
def test_no_page_writes_a_stray_string(script):
    """Streamlit's magic writes a string literal standing alone in a page script onto the page: an
    attribute docstring under a constant of the annotation page showed above its title."""
    path = Path(APP) if script == "streamlit_app.py" else PAGES / script
    assert list(_bare_strings(ast.parse(path.read_text()).body)) == []


# --------------------------------------------------------------------------- annotation


def test_pair_is_shown_and_a_better_records_the_canonical_choice(app_db, people):
    at, annotator = _annotating(app_db, people, 4)
    cid, a_left = _shown_pair(at, app_db, annotator)
    texts = _texts(at)
    i = next(int(t.split()[2].rstrip(":")) for t in texts if t.startswith("Prompt number"))
    left, right = (f"Answer A to {i}", f"Answer B to {i}") if a_left else (f"Answer B to {i}", f"Answer A to {i}")
    # Left before right on the page, under the "Response A" / "Response B" labels.
    order = [t for t in texts if t.startswith("Answer")]
    assert order[0].startswith(left) and order[1].startswith(right)
    assert [s.value for s in at.subheader] == ["Response A", "Response B"]

    _press(at, "judge_left").click()
    at.run()
    assert not at.exception and not _errors(at)
    [judgment] = _judgments(app_db, annotator)
    assert judgment.comparison_id == cid
    assert judgment.choice is (Choice.a if a_left else Choice.b)
    assert judgment.a_on_left is a_left
    assert judgment.time_spent_ms is not None and judgment.time_spent_ms >= 0
    next_cid, _ = _shown_pair(at, app_db, annotator)
    assert next_cid != cid
    assert f"Prompt number {i}: explain something." not in _texts(at)
    assert [m.value for m in at.metric] == ["1", "3"]
    # No browser behind AppTest, so no time zone: the day is UTC's, and the tooltip says whose day it is.
    assert at.metric[0].proto.help == "Since midnight in your browser's time zone (UTC)."


def test_strength_rationale_and_flags_are_recorded(app_db, people):
    at, annotator = _annotating(app_db, people, 2)
    cid, a_left = _shown_pair(at, app_db, annotator)
    _choose_strength(at, cid, 3)
    at.text_input(key=f"rationale_{cid}").input("more accurate")
    assert [o.content for o in at.pills(key=f"flags_{cid}").proto.options] == [
        "unsafe", "needs expert", "broken text", "not English"]
    at.pills(key=f"flags_{cid}").set_value(["unsafe", "not_english"])
    at.run()
    _press(at, "judge_right").click()
    at.run()
    [judgment] = _judgments(app_db, annotator)
    assert judgment.choice is (Choice.b if a_left else Choice.a)
    assert (judgment.strength, judgment.rationale, judgment.flags) == (3, "more accurate", ["not_english", "unsafe"])


def test_tie_ignores_strength(app_db, people):
    at, annotator = _annotating(app_db, people, 2)
    cid, _ = _shown_pair(at, app_db, annotator)
    _choose_strength(at, cid, 2)
    _press(at, "judge_tie").click()
    at.run()
    [judgment] = _judgments(app_db, annotator)
    assert (judgment.choice, judgment.strength) == (Choice.tie, None)


def test_strength_keys_choose_toggle_and_belong_to_the_pair_on_screen(app_db, people):
    """Keys 1, 2, 3 are buttons with shortcuts: one chooses its strength, pressed again it clears it (and
    stays cleared on the next runs), and a press left over from the previous pair changes nothing."""
    at, annotator = _annotating(app_db, people, 3)
    cid, _ = _shown_pair(at, app_db, annotator)
    assert [at.button(key=f"set_strength_{v}_{cid}").proto.shortcut for v in (1, 2, 3)] == ["1", "2", "3"]
    assert _strength_shown(at, cid) is None
    _choose_strength(at, cid, 2)
    assert _strength_shown(at, cid) == 2
    _choose_strength(at, cid, 2)
    assert _strength_shown(at, cid) is None
    at.run()
    assert _strength_shown(at, cid) is None  # the cleared choice is not brought back from the draft
    _choose_strength(at, cid, 1)
    _hold_inputs(at)
    stale = at.button(key=f"set_strength_3_{cid}")
    _choose_strength(at, cid, 3)
    assert _strength_shown(at, cid) == 3
    _press(at, "judge_left").click().run()
    second, _ = _shown_pair(at, app_db, annotator)
    assert _strength_shown(at, second) is None  # a new pair starts with none
    stale.click().run()  # key 3 from the render that showed the first pair
    assert not at.exception
    assert _strength_shown(at, second) is None
    assert at.session_state["pair_strength"] in ({}, {second: None})
    _press(at, "judge_right").click().run()
    assert [(j.comparison_id, j.strength) for j in _judgments(app_db, annotator)] == [(cid, 3), (second, None)]


def test_the_page_has_the_keys_the_readme_lists(app_db, people):
    from tests.test_readme import key_rows, section

    at, _ = _annotating(app_db, people, 2)
    shortcuts = sorted(b.proto.shortcut.upper() for b in at.button if b.proto.shortcut)
    assert shortcuts == sorted(key_rows(section("Annotating")))


def test_a_press_on_a_pair_others_filled_past_its_lease_is_kept_and_the_page_says_so(app_db, people):
    """The README promised another pair once others filled the overlap of a pair left on screen past its
    lease; the press is saved (never lost), so the page says it was an extra judgment."""
    from datetime import timedelta

    from sqlalchemy import update

    from annotate.models import Comparison, utcnow
    from annotate.ui.context import EXTRA_VOTE

    at, annotator = _annotating(app_db, people, 2)
    cid, _ = _shown_pair(at, app_db, annotator)
    _, admin = people
    settings = load_settings()
    with app_db.begin() as session:
        session.execute(update(Lease).where(Lease.comparison_id == cid)
                        .values(expires_at=utcnow() - timedelta(seconds=1)))
        judgments.submit(session, settings, actor=admin, comparison_id=cid, shown="tie")
    _press(at, "judge_left").click()
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.toast] == [EXTRA_VOTE]
    [mine] = _judgments(app_db, annotator)
    assert (mine.comparison_id, mine.state) == (cid, JudgmentState.active)
    with app_db.read() as session:
        assert session.get(Comparison, cid).judgment_count == 2
    assert _shown_pair(at, app_db, annotator)[0] != cid


def test_undo_retracts_and_shows_the_pair_again_then_skip_moves_on(app_db, people):
    at, annotator = _annotating(app_db, people, 3)
    first, _ = _shown_pair(at, app_db, annotator)
    _press(at, "judge_both_bad").click()
    at.run()
    assert _shown_pair(at, app_db, annotator)[0] != first

    _undo_button(at).click()
    at.run()
    [judgment] = _judgments(app_db, annotator)
    assert judgment.state is JudgmentState.retracted
    assert _shown_pair(at, app_db, annotator)[0] == first
    assert any("withdrawn" in t.value for t in at.toast)

    _press(at, "skip").click()
    at.run()
    with app_db.read() as session:
        skipped = session.scalar(select(Lease).where(Lease.comparison_id == first,
                                                     Lease.annotator_id == annotator.id))
    assert skipped.skipped
    assert _shown_pair(at, app_db, annotator)[0] != first
    assert len(_judgments(app_db, annotator)) == 1


def test_undo_right_after_skip_brings_the_skipped_pair_back(app_db, people):
    """U after an accidental S undoes the skip, not the judgment before it."""
    at, annotator = _annotating(app_db, people, 4)
    judged, _ = _shown_pair(at, app_db, annotator)
    _press(at, "judge_left").click().run()
    skipped, _ = _shown_pair(at, app_db, annotator)
    _press(at, "skip").click().run()
    assert _shown_pair(at, app_db, annotator)[0] not in (judged, skipped)

    _undo_button(at).click().run()
    assert not at.exception
    assert _shown_pair(at, app_db, annotator)[0] == skipped
    [judgment] = _judgments(app_db, annotator)
    assert (judgment.comparison_id, judgment.state) == (judged, JudgmentState.active)
    assert any("Skip undone" in t.value for t in at.toast), [t.value for t in at.toast]
    _press(at, "judge_right").click().run()
    assert [j.comparison_id for j in _judgments(app_db, annotator)] == [judged, skipped]


def test_a_press_on_a_probe_whose_judgment_another_tab_undid_records_nothing_against_unseen_sides(app_db, people):
    """This tab shows the probe of a judged pair (sides swapped from the judgment); another tab
    undoes that judgment, which leases the pair back with its original sides. The press here was
    read against those sides, so the response the annotator did not pick was recorded. Now nothing
    is saved, the toast says why, and the pair comes back as it now stands."""
    from datetime import timedelta

    from annotate.models import AppSetting, utcnow

    annotator, _ = people
    settings = load_settings()  # the app's
    with app_db.begin() as session:
        judged, _ = make_comparisons(session, 2)
        session.add(AppSetting(key="probe_rate", value=1.0))  # every claim after a judgment is a probe
        judgments.submit(session, settings, actor=annotator, comparison_id=judged, shown="left",
                         now=utcnow() - timedelta(minutes=10))
    at = _login(_app(), "ann")
    cid, a_left = _shown_pair(at, app_db, annotator)
    [original] = _judgments(app_db, annotator)
    assert (cid, a_left) == (judged, not original.a_on_left)  # the probe, sides swapped

    with app_db.begin() as session:  # the other tab
        judgments.undo_last_action(session, settings, actor=annotator)
    _press(at, "judge_left").click().run()
    assert not at.exception
    assert any("swapped its sides" in t.value for t in at.toast), [t.value for t in at.toast]
    assert [j.state for j in _judgments(app_db, annotator)] == [JudgmentState.retracted]
    assert _shown_pair(at, app_db, annotator) == (judged, original.a_on_left)

    _press(at, "judge_left").click().run()  # the left response as now shown
    live = [j for j in _judgments(app_db, annotator) if j.state is JudgmentState.active]
    assert [(j.comparison_id, j.choice) for j in live] == [(judged, Choice.a if original.a_on_left else Choice.b)]


def _fill(at: AppTest, cid: int, strength, rationale: str, flags: list[str]) -> None:
    _choose_strength(at, cid, strength)
    at.text_input(key=f"rationale_{cid}").input(rationale)
    at.pills(key=f"flags_{cid}").set_value(flags)
    at.run()


def _inputs_shown(at: AppTest, cid: int) -> tuple:
    return (_strength_shown(at, cid), at.text_input(key=f"rationale_{cid}").value,
            at.pills(key=f"flags_{cid}").value)


def test_optional_inputs_survive_undo_and_a_visit_to_the_guidelines(app_db, people):
    """Undo brings the pair back as it was judged (strength, rationale, flags), the pair that was on
    screen keeps what was typed into it, and so does a pair left for the Guidelines page."""
    at, annotator = _annotating(app_db, people, 4)
    first, _ = _shown_pair(at, app_db, annotator)
    _fill(at, first, 3, "clearer and correct", ["unsafe"])
    _press(at, "judge_left").click().run()
    second, _ = _shown_pair(at, app_db, annotator)
    _fill(at, second, 1, "half-typed thought", [])

    _undo_button(at).click().run()
    assert _shown_pair(at, app_db, annotator)[0] == first
    assert _inputs_shown(at, first) == (3, "clearer and correct", ["unsafe"])
    _press(at, "judge_right").click().run()
    assert _shown_pair(at, app_db, annotator)[0] == second
    assert _inputs_shown(at, second) == (1, "half-typed thought", [])
    retracted, again = _judgments(app_db, annotator)
    assert (again.comparison_id, again.supersedes_id) == (first, retracted.id)
    assert (again.strength, again.rationale, again.flags) == (3, "clearer and correct", ["unsafe"])

    at.switch_page(_page("guidelines.py"))
    at.run()
    at.switch_page(_page("annotate.py"))
    at.run()
    assert _shown_pair(at, app_db, annotator)[0] == second
    assert _inputs_shown(at, second) == (1, "half-typed thought", [])
    _press(at, "judge_tie").click().run()  # a tie keeps no strength
    assert _judgments(app_db, annotator)[-1].rationale == "half-typed thought"
    third, _ = _shown_pair(at, app_db, annotator)
    assert _inputs_shown(at, third) == (None, "", [])


@pytest.mark.parametrize("action", ["judge_tie", "judge_both_bad"])
def test_undo_of_a_tie_brings_back_no_strength(app_db, people, action):
    """3 then T saves a tie with no strength (ignored for tie and both bad); U brought the pair back with
    "Much better" chosen, and A then saved "A better (much better)", a strength never chosen for A.
    The pair comes back as saved: no strength, its rationale and flags kept."""
    at, annotator = _annotating(app_db, people, 2)
    first, _ = _shown_pair(at, app_db, annotator)
    _fill(at, first, 3, "same facts", ["needs_expert"])
    _press(at, action).click().run()
    assert _judgments(app_db, annotator)[-1].strength is None

    _undo_button(at).click().run()
    assert _shown_pair(at, app_db, annotator)[0] == first
    assert _inputs_shown(at, first) == (None, "same facts", ["needs_expert"])
    _press(at, "judge_left").click().run()
    retracted, live = _judgments(app_db, annotator)
    assert (live.supersedes_id, live.strength, live.rationale, live.flags) == (
        retracted.id, None, "same facts", ["needs_expert"])


def test_undo_from_a_new_log_in_shows_the_pair_as_judged(app_db, people):
    """The session that judged is gone (a reload, another tab): Undo takes the withdrawn judgment's
    strength, rationale and flags from the database."""
    at, annotator = _annotating(app_db, people, 3)
    first, _ = _shown_pair(at, app_db, annotator)
    _fill(at, first, 2, "fewer errors", ["needs_expert", "unsafe"])
    _press(at, "judge_right").click().run()

    again = _login(_app(), "ann")
    _undo_button(again).click().run()
    assert not again.exception
    assert _shown_pair(again, app_db, annotator)[0] == first
    assert _inputs_shown(again, first) == (2, "fewer errors", ["needs_expert", "unsafe"])
    _press(again, "judge_left").click().run()
    retracted, live = _judgments(app_db, annotator)
    assert (live.supersedes_id, live.strength, live.rationale, live.flags) == (
        retracted.id, 2, "fewer errors", ["needs_expert", "unsafe"])


def test_double_submit_shows_a_toast_not_a_traceback(app_db, people):
    """The pair was already judged (another tab, a double click): the click warns and records nothing."""
    at, annotator = _annotating(app_db, people, 2)
    cid, _ = _shown_pair(at, app_db, annotator)
    settings = load_settings()
    with app_db.begin() as session:
        judgments.submit(session, settings, actor=annotator, comparison_id=cid, shown="tie")
    _press(at, "judge_left").click()
    at.run()
    assert not at.exception
    assert any("already judged" in t.value or "not assigned" in t.value for t in at.toast), [t.value for t in at.toast]
    assert not [t.value for t in at.toast if "reload" in t.value.lower()]  # a reload would log them out
    assert _shown_pair(at, app_db, annotator)[0] != cid  # the page moved on by itself
    assert len(_judgments(app_db, annotator)) == 1


def _page_constant(name: str):
    """A constant of the annotation page, read from its source (importing the page would run it)."""
    tree = ast.parse((PAGES / "annotate.py").read_text())
    [value] = [node.value for node in tree.body if isinstance(node, ast.Assign)
               and [getattr(t, "id", None) for t in node.targets] == [name]]
    return ast.literal_eval(value)


def _warnings(at: AppTest) -> list[str]:
    return [w.value for w in at.warning]


def test_a_pair_judged_in_another_tab_is_replaced_with_a_warning_and_a_longer_guard(app_db, people):
    """Another tab judged the pair on screen; here a strength key (any press but a judgment) ran the page,
    which drew the next pair. That swap used to pass unnoticed, and a judgment key pressed 0.8 s later,
    meant for the pair that went, judged the new one. Now the page says the pair changed, a judge key
    within SWAP_MIN_SHOWN_S of the swap is refused with a toast, and a later one is saved."""
    swap_min_s, min_s = _page_constant("SWAP_MIN_SHOWN_S"), _page_constant("MIN_SHOWN_S")
    at, annotator = _annotating(app_db, people, 3)
    first, _ = _shown_pair(at, app_db, annotator)
    assert not _warnings(at)
    with app_db.begin() as session:  # the other tab
        judgments.submit(session, load_settings(), actor=annotator, comparison_id=first, shown="left")
    _choose_strength(at, first, 2)
    assert not at.exception
    second, _ = _shown_pair(at, app_db, annotator)
    assert second != first
    [warning] = _warnings(at)
    assert f"Pair #{first} is no longer yours" in warning and "another pair" in warning

    _press(at, "judge_right", shown_s=0.8).click().run()
    assert any("replaced the pair you had" in t.value for t in at.toast), [t.value for t in at.toast]
    assert [j.comparison_id for j in _judgments(app_db, annotator)] == [first]
    assert _shown_pair(at, app_db, annotator)[0] == second
    assert not _warnings(at)  # said once, with the swap

    _press(at, "judge_right", shown_s=swap_min_s + 0.1).click().run()
    assert [j.comparison_id for j in _judgments(app_db, annotator)] == [first, second]
    third, _ = _shown_pair(at, app_db, annotator)
    assert third not in (first, second) and not _warnings(at)  # moved on by its own action: no warning
    _press(at, "judge_left", shown_s=min_s + 0.1).click().run()  # the usual guard again
    assert [j.comparison_id for j in _judgments(app_db, annotator)] == [first, second, third]


def test_a_refused_press_on_a_pair_judged_elsewhere_is_told_once(app_db, people):
    """A judgment key on the pair another tab judged is refused with a toast that says so; the page
    then shows the next pair without repeating it in a warning."""
    at, annotator = _annotating(app_db, people, 3)
    first, _ = _shown_pair(at, app_db, annotator)
    with app_db.begin() as session:
        judgments.submit(session, load_settings(), actor=annotator, comparison_id=first, shown="tie")
    _press(at, "judge_left").click().run()
    assert any("not assigned" in t.value for t in at.toast), [t.value for t in at.toast]
    assert _shown_pair(at, app_db, annotator)[0] != first
    assert not _warnings(at)


def test_undo_here_brings_a_pair_back_without_a_swap_warning(app_db, people):
    at, annotator = _annotating(app_db, people, 3)
    first, _ = _shown_pair(at, app_db, annotator)
    _press(at, "judge_left").click().run()
    _undo_button(at).click().run()
    assert _shown_pair(at, app_db, annotator)[0] == first
    assert not _warnings(at)


@pytest.mark.parametrize("action", ["judge_left", "skip"])
def test_a_key_pressed_twice_acts_once_and_never_on_the_next_pair(app_db, people, action):
    """A key pressed twice before the next pair arrives: the browser sends the second press from the
    render that showed the first pair. It must not judge (or skip) the pair that replaced it, which
    the annotator has not seen, nor warn that the first pair is "not assigned any more"."""
    at, annotator = _annotating(app_db, people, 3)
    first, _ = _shown_pair(at, app_db, annotator)
    # The browser sends the values its render holds (AppTest would look up unset ones in session state).
    at.text_input(key=f"rationale_{first}").set_value("")
    at.pills(key=f"flags_{first}").set_value([])
    stale = _press(at, action).click()  # keeps its trigger: it belongs to the render showing `first`
    stale.run()
    second, _ = _shown_pair(at, app_db, annotator)
    assert second != first
    stale.run()  # the same press again, from the same render
    assert not at.exception
    assert _shown_pair(at, app_db, annotator)[0] == second
    assert [j.comparison_id for j in _judgments(app_db, annotator)] == ([first] if action == "judge_left" else [])
    with app_db.read() as session:
        assert not session.scalar(select(Lease.skipped).where(Lease.comparison_id == second,
                                                              Lease.annotator_id == annotator.id))
    assert not [t.value for t in at.toast if "assigned" in t.value or "already judged" in t.value]
    _press(at, "judge_right").click().run()  # the pair on screen still takes a press
    assert [j.comparison_id for j in _judgments(app_db, annotator)][-1] == second


def _hold_inputs(at: AppTest) -> None:
    """Make the next runs send the inputs this render holds, as the browser does (AppTest would look up
    unset ones in session state)."""
    for cid in [int(c.value.split("#")[1].split()[0]) for c in at.caption if c.value.startswith("Pair #")]:
        at.text_input(key=f"rationale_{cid}").set_value("")
        at.pills(key=f"flags_{cid}").set_value([])


@pytest.mark.parametrize("pairs", [3, 2], ids=["pair-on-screen", "queue-empty"])
def test_u_pressed_twice_before_the_page_rerenders_undoes_once(app_db, people, pairs):
    """U pressed twice quickly: the second press comes from the same render as the first. Only the
    latest action is undone; the judgment before it stays (the same rule as a judge or skip key)."""
    annotator, _ = people
    with app_db.begin() as session:
        make_comparisons(session, pairs)
    at = _login(_app(), "ann")
    first, _ = _shown_pair(at, app_db, annotator)
    _press(at, "judge_left").click().run()
    second, _ = _shown_pair(at, app_db, annotator)
    _press(at, "judge_right").click().run()
    assert bool([c for c in at.caption if c.value.startswith("Pair #")]) == (pairs == 3)
    _hold_inputs(at)
    stale = _undo_button(at).click()  # keeps its trigger: it belongs to the render after the two judgments
    stale.run()
    assert _shown_pair(at, app_db, annotator)[0] == second
    stale.run()  # the second press, from the same render
    assert not at.exception
    assert _shown_pair(at, app_db, annotator)[0] == second
    assert [(j.comparison_id, j.state) for j in _judgments(app_db, annotator)] == [
        (first, JudgmentState.active), (second, JudgmentState.retracted)]


@pytest.mark.parametrize("action", ["judge_left", "skip"])
def test_a_press_just_after_the_pair_appeared_is_refused_and_the_pair_stays(app_db, people, action):
    """A key pressed twice, the second press arriving just after the next pair was drawn (the browser
    had it, the annotator had not read it): refused with a toast, nothing recorded, the pair stays,
    and the same key once it has been on screen a while acts."""
    at, annotator = _annotating(app_db, people, 3)
    first, _ = _shown_pair(at, app_db, annotator)
    _press(at, action, shown_s=-60).click().run()  # drawn "now": no clock can make this press late
    assert not at.exception
    # In ms: "0.5 s" was how 0.46 s read, for a limit of 0.5 s.
    [late] = [re.search(r"Not saved: that key came (\d+) ms after this pair appeared", t.value) for t in at.toast]
    assert late and int(late.group(1)) < 500, at.toast
    assert _shown_pair(at, app_db, annotator)[0] == first
    assert _judgments(app_db, annotator) == []
    with app_db.read() as session:
        assert not session.scalar(select(Lease.skipped).where(Lease.comparison_id == first,
                                                              Lease.annotator_id == annotator.id))
    _press(at, action).click().run()
    assert _shown_pair(at, app_db, annotator)[0] != first
    assert [j.comparison_id for j in _judgments(app_db, annotator)] == ([first] if action == "judge_left" else [])


def test_the_time_a_pair_is_shown_counts_from_the_end_of_the_run_that_drew_it(app_db, people, monkeypatch):
    """On a busy server the run drawing the next pair took long enough (its texts, its buttons) to use up
    MIN_SHOWN_S before the browser had the pair: a key pressed twice judged it unseen. Drawn slowly here
    (0.4 s per text), a press right after the run is still refused, and one after MIN_SHOWN_S is saved."""
    from annotate.ui import render

    at, annotator = _annotating(app_db, people, 3)
    _press(at, "judge_left").click().run()
    second, _ = _shown_pair(at, app_db, annotator)
    slow = render.show_text

    def show_text_slowly(*args, **kwargs):
        time.sleep(0.4)
        return slow(*args, **kwargs)

    monkeypatch.setattr(render, "show_text", show_text_slowly)
    at.run()  # the same pair, drawn again: its time stands
    at.session_state["pair_drawn"] = None  # as if this run were the one that first drew it
    at.run()
    assert _shown_pair(at, app_db, annotator)[0] == second
    [button] = [b for b in at.button if b.key == f"judge_left_{second}"]
    button.click().run()  # at once: the run drawing it took 0.8 s, but the pair had been on screen for none
    assert any("Not saved: that key came" in t.value for t in at.toast), [t.value for t in at.toast]
    assert _shown_pair(at, app_db, annotator)[0] == second
    time.sleep(_page_constant("MIN_SHOWN_S"))
    [button] = [b for b in at.button if b.key == f"judge_left_{second}"]
    button.click().run()
    assert _shown_pair(at, app_db, annotator)[0] != second
    assert [j.comparison_id for j in _judgments(app_db, annotator)][-1] == second


def test_a_pair_brought_back_by_undo_can_be_judged_at_once(app_db, people):
    """The annotator has seen a pair that undo brings back: a quick re-judgment is taken, once."""
    at, annotator = _annotating(app_db, people, 3)
    first, _ = _shown_pair(at, app_db, annotator)
    _press(at, "judge_left").click().run()
    second, _ = _shown_pair(at, app_db, annotator)
    _undo_button(at).click().run()
    assert _shown_pair(at, app_db, annotator)[0] == first
    _press(at, "judge_right", shown_s=-60).click().run()
    assert _shown_pair(at, app_db, annotator)[0] == second
    _press(at, "judge_right", shown_s=-60).click().run()  # a new pair gets no such pass
    assert _shown_pair(at, app_db, annotator)[0] == second
    assert [(j.comparison_id, j.state) for j in _judgments(app_db, annotator)] == [
        (first, JudgmentState.retracted), (first, JudgmentState.active)]


@pytest.mark.parametrize("action", ["judge_left", "skip", "undo"])
def test_a_press_after_the_idle_limit_logs_out_and_acts_not(app_db, people, action):
    """Callbacks run before the script's idle check: a press in a session idle past the limit recorded
    its judgment (or skip, or undo) and only then showed the login page. Now it does nothing."""
    at, annotator = _annotating(app_db, people, 3)
    first, _ = _shown_pair(at, app_db, annotator)
    _press(at, "judge_tie").click().run()
    second, _ = _shown_pair(at, app_db, annotator)
    button = _undo_button(at) if action == "undo" else _press(at, action)
    at.session_state["last_seen"] = time.time() - 9 * 3600
    button.click().run()
    assert not at.exception
    assert [t.value for t in at.title] == ["prefloop"] and "actor" not in at.session_state
    assert [i.value for i in at.info] == ["You were logged out after 480 minutes without activity."]
    assert [(j.comparison_id, j.state) for j in _judgments(app_db, annotator)] == [(first, JudgmentState.active)]
    with app_db.read() as session:
        assert not session.scalar(select(Lease.skipped).where(Lease.comparison_id == second,
                                                              Lease.annotator_id == annotator.id))


def test_the_rationale_box_says_how_to_get_back_to_the_keys(app_db, people):
    """Keys typed in the rationale are text, and Esc or Enter leave the focus there: the page says Tab."""
    at, _ = _annotating(app_db, people, 1)
    assert [c.value for c in at.caption if "Tab" in c.value] == [
        "The keys do nothing while you type in this box: press **Tab** to leave it, then judge with a key."]


def test_u_pressed_again_once_the_pair_is_back_undoes_the_action_before(app_db, people):
    """Deliberate repeated undo: U, the withdrawn pair is shown, U again withdraws the judgment before it."""
    at, annotator = _annotating(app_db, people, 3)
    first, _ = _shown_pair(at, app_db, annotator)
    _press(at, "judge_left").click().run()
    second, _ = _shown_pair(at, app_db, annotator)
    _press(at, "skip").click().run()
    _undo_button(at).click().run()
    assert _shown_pair(at, app_db, annotator)[0] == second
    assert any("Skip undone" in t.value for t in at.toast)
    _undo_button(at).click().run()
    assert not at.exception
    assert _shown_pair(at, app_db, annotator)[0] == first
    [judgment] = _judgments(app_db, annotator)
    assert judgment.state is JudgmentState.retracted
    _undo_button(at).click().run()  # nothing left to undo
    assert any("Nothing recent to undo" in t.value for t in at.toast)
    _press(at, "judge_tie").click().run()
    assert [(j.comparison_id, j.state) for j in _judgments(app_db, annotator)] == [
        (first, JudgmentState.retracted), (first, JudgmentState.active)]


def test_no_more_pairs_is_handled(app_db, people):
    at = _login(_app(), "ann")
    assert not at.exception
    assert any("No more pairs" in s.value for s in at.success)
    _undo_button(at).click()
    at.run()
    assert any("Nothing recent to undo" in t.value for t in at.toast)


def test_no_more_pairs_says_where_the_remaining_ones_are(app_db, people):
    """The only open pair is on the admin's screen (overlap 1): "Remaining 1" beside "No more pairs"
    read as a contradiction; the message now says where that pair is."""
    from annotate import queue

    annotator, admin = people
    with app_db.begin() as session:
        make_comparisons(session, 1)
    settings = load_settings()
    with app_db.begin() as session:
        options = campaign.get_options(session, settings)
        assert queue.next_comparison(session, settings, options, actor=admin) is not None
    at = _login(_app(), "ann")
    [message] = [s.value for s in at.success]
    assert "No more pairs" in message
    assert "The 1 remaining pair is on other annotators' screens" in message
    assert [m.value for m in at.metric if m.label == "Remaining"] == ["1"]


def test_empty_queue_checks_for_new_pairs_without_a_reload(app_db, people):
    """A reload starts a new, logged-out browser session: the empty queue must not send the
    annotator there, and offers a button that looks for new pairs instead."""
    annotator, _ = people
    at = _login(_app(), "ann")
    [message] = [s.value for s in at.success]
    assert "No more pairs" in message and "reload" not in message.lower()
    with app_db.begin() as session:
        make_comparisons(session, 1)
    at.button(key="check_again").click().run()
    assert not at.exception and not at.success
    assert _shown_pair(at, app_db, annotator)[0] is not None
    assert at.session_state["actor"].username == "ann"


def test_chat_prompt_is_rendered_as_chat(app_db, people):
    with app_db.begin() as session:
        make_comparisons(session, 1, chat=True)
    at = _login(_app(), "ann")
    assert [c.name for c in at.chat_message] == ["user", "assistant", "user"]
    assert at.chat_message[0].markdown[0].value == "Question 0?"
    assert at.chat_message[2].markdown[0].value == "Details for 0."


def test_a_system_turn_does_not_look_like_the_user(app_db, people):
    """A system message had the user's avatar, with a small "system" caption: it read as the user's words."""
    from annotate.models import Comparison, Prompt, Response
    from tests.factories import h

    with app_db.begin() as session:
        prompt = Prompt(content_hash=h("system-chat"), messages=[
            {"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi?"}])
        session.add(prompt)
        session.flush()
        a, b = (Response(prompt_id=prompt.id, content_hash=h("system-chat", x), text=x) for x in "ab")
        session.add_all([a, b])
        session.flush()
        session.add(Comparison(prompt_id=prompt.id, response_a_id=a.id, response_b_id=b.id))
    at = _login(_app(), "ann")
    assert [(c.name, c.avatar) for c in at.chat_message] == [("system", ":material/settings:"), ("user", "user")]
    assert [c.value for c in at.chat_message[0].caption] == ["system"]


@pytest.mark.parametrize("long", [False, True])
def test_a_long_chat_says_its_start_is_above(app_db, people, long):
    """A long chat's box opens scrolled to its last turn (Streamlit keeps chat boxes at their end): the
    first turns were hidden above with nothing to say so. A short chat, shown whole, says nothing."""
    from annotate.models import Comparison, Prompt, Response
    from tests.factories import h

    body = "FIRST-TURN-START " + "words " * (300 if long else 5)
    with app_db.begin() as session:
        prompt = Prompt(content_hash=h("long-chat", long), messages=[
            {"role": "user", "content": body}, {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "And then?"}])
        session.add(prompt)
        session.flush()
        a, b = (Response(prompt_id=prompt.id, content_hash=h("long-chat", long, x), text=x) for x in "ab")
        session.add_all([a, b])
        session.flush()
        session.add(Comparison(prompt_id=prompt.id, response_a_id=a.id, response_b_id=b.id))
    at = _login(_app(), "ann")
    assert at.chat_message[0].markdown[0].value.startswith("FIRST-TURN-START")
    said = [c.value for c in at.caption if "scroll up" in c.value]
    assert bool(said) is long and (not long or "3 turns" in said[0])


def test_untrusted_text_is_rendered_inert(app_db, people):
    from annotate.models import Comparison, Prompt, Response
    from tests.factories import h

    hostile = "<script>alert(1)</script> ![x](http://evil.example/p.png) costs $5"
    with app_db.begin() as session:
        prompt = Prompt(content_hash=h("hostile"), text="Say something $x$ <img src=x onerror=alert(1)>")
        session.add(prompt)
        session.flush()
        a = Response(prompt_id=prompt.id, content_hash=h("ha"), text=hostile)
        b = Response(prompt_id=prompt.id, content_hash=h("hb"), text="```\n$ echo <b>\n```")
        session.add_all([a, b])
        session.flush()
        session.add(Comparison(prompt_id=prompt.id, response_a_id=a.id, response_b_id=b.id))
    at = _login(_app(), "ann")
    bodies = {m.value: m for m in at.markdown}
    assert "Say something \\$x\\$ &lt;img src=x onerror=alert(1)>" in bodies
    assert "&lt;script>alert(1)&lt;/script> !\\[x\\](`http://evil.example/p.png`) costs \\$5" in bodies
    assert "```\n$ echo <b>\n```" in bodies
    assert not any(m.proto.allow_html for m in at.markdown)


# --------------------------------------------------------------------------- guidelines and admin pages


def test_guidelines_by_key_and_admin_edit(app_db, people):
    at = _login(_app(), "boss")
    at.switch_page(_page("guidelines.py"))
    at.run()
    at.text_area(key="guidelines_text").input("# House rules\n\nBe kind.")
    next(b for b in at.button if b.label == "Save guidelines").click()
    at.run()
    assert not at.exception and not _errors(at)
    settings = load_settings()
    with app_db.read() as session:
        assert campaign.get_options(session, settings).guidelines == "# House rules\n\nBe kind."
    with app_db.begin() as session:
        make_comparisons(session, 1)
    at.switch_page(_page("annotate.py"))
    at.run()
    assert "# House rules\n\nBe kind." not in _texts(at)  # one key away, not on the page
    [button] = [b for b in at.button if b.key == "show_guidelines"]
    assert button.proto.shortcut.upper() == "G"
    button.click().run()
    assert not at.exception
    assert "# House rules\n\nBe kind." in _texts(at)


def test_annotator_cannot_edit_guidelines(app_db, people):
    at = _login(_app(), "ann")
    at.switch_page(_page("guidelines.py"))
    at.run()
    assert not at.text_area


def test_admin_pages_render_for_an_admin(app_db, people):
    at = _login(_app(), "boss")
    titles = {}
    for name in ADMIN_PAGES:
        at.switch_page(_page(name))
        at.run()
        assert not at.exception, at.exception
        assert not _errors(at)
        titles[name] = [t.value for t in at.title]
    assert {name: titles[name] for name in ("admin_import.py", "admin_export.py", "admin_users.py")} == {
        "admin_import.py": ["Import"], "admin_export.py": ["Export"], "admin_users.py": ["Users"]}
    assert all(titles.values()), titles


def test_export_page_offers_every_download(app_db, people):
    at = _login(_app(), "boss")
    at.switch_page(_page("admin_export.py"))
    at.run()
    labels = [e.proto.label for e in at.get("download_button")]
    assert labels == ["TRL JSONL", "Parquet (datasets)", "Judgments CSV", "Judgments JSONL",
                      "Judgments Parquet (datasets)"]
    # A 13 MB raw-judgments JSONL of an ordinary campaign did not load in datasets; the page says so up front.
    jsonl = next(e for e in at.get("download_button") if e.proto.label == "Judgments JSONL")
    assert "first 10 MB" in jsonl.proto.help and "Parquet" in jsonl.proto.help


@pytest.fixture
def deferred_downloads(monkeypatch) -> dict:
    """file id -> the data callable of each deferred download button (what a click in the browser runs)."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    seen: dict = {}
    original = MediaFileManager.add_deferred

    def add_deferred(self, data_callable, *args, **kwargs):
        file_id = original(self, data_callable, *args, **kwargs)
        seen[file_id] = data_callable
        return file_id

    monkeypatch.setattr(MediaFileManager, "add_deferred", add_deferred)
    return seen


def _download(at: AppTest, deferred: dict, label: str):
    button = next(b for b in at.get("download_button") if b.proto.label == label)
    return deferred[button.proto.deferred_file_id]()


def test_export_page_filters_imported_raters(app_db, people, deferred_downloads):
    """Imported raters are not accounts: the page offers them in a filter of their own, shown only where an
    import named some, and refuses them with imported judgments not counted."""
    from annotate import ingest
    from annotate.settings import load_settings

    at = _login(_app(), "boss")
    at.switch_page(_page("admin_export.py"))
    at.run()
    assert [m.label for m in at.multiselect] == ["Annotators (empty: everyone, and imported judgments)"]
    rows = [{"prompt": "q", "response_a": "better", "response_b": "worse", "winner": w, "annotator": r}
            for r, w in (("r1", "a"), ("r2", "b"), ("r3", "b"))]
    with app_db.begin() as session:
        ingest.import_file(session, load_settings(), "\n".join(map(json.dumps, rows)).encode(), system=True,
                           overlap=3)
    at.run()
    raters = at.multiselect(key="export_raters")
    assert raters.options == ["r1", "r2", "r3"]
    raters.set_value(["r1"])
    at.button(key="export_apply").click()
    at.run()
    assert not at.exception and not _errors(at)
    assert any("imported raters r1" in c.value for c in at.caption if "Filters applied" in c.value)
    (row,) = [json.loads(line) for line in _download(at, deferred_downloads, "TRL JSONL").decode().splitlines()]
    assert (row["chosen"], row["n_judgments"]) == ("better", 1)  # r2 and r3 said worse
    at.checkbox(key="export_imported").uncheck()
    at.button(key="export_apply").click()
    at.run()
    assert any(e.startswith("Imported raters are chosen, but imported judgments are not counted") for e in _errors(at))
    assert not at.get("download_button")


def test_export_download_builds_the_file_and_reports_a_failure(app_db, people, deferred_downloads):
    at = _login(_app(), "boss")
    at.switch_page(_page("admin_export.py"))
    at.run()
    lines = _download(at, deferred_downloads, "Judgments JSONL").decode().splitlines()
    with app_db.read() as session:
        assert len(lines) == session.scalar(select(func.count()).select_from(Judgment))
    table = pq.read_table(io.BytesIO(_download(at, deferred_downloads, "Judgments Parquet (datasets)")))
    assert table.num_rows == len(lines)
    # The admin loses the role in another session: the download is refused server-side, and
    # the page says why on its next run (the browser itself only hears that it failed).
    _, boss = people
    with app_db.begin() as session:
        session.get(User, boss.id).role = Role.annotator
    with pytest.raises(PermissionDenied):
        _download(at, deferred_downloads, "TRL JSONL")
    with app_db.begin() as session:
        session.get(User, boss.id).role = Role.admin
    at.run()
    assert [e for e in _errors(at) if e.startswith("The last download failed: ")], _errors(at)
    at.run()
    assert not [e for e in _errors(at) if e.startswith("The last download failed")], "shown once"


def _upload(at: AppTest, name: str, content: bytes) -> None:
    at.file_uploader(key="import_file").upload(name, content, "application/jsonl")
    at.run()
    assert not at.exception, at.exception


def test_import_previews_and_blocks_a_bad_file(app_db, people):
    rows = [{"prompt": "p1", "response_a": "x", "response_b": "y"},
            {"prompt": "p2", "response_a": "same", "response_b": "same"},
            {"prompt": "p3"}]
    at = _login(_app(), "boss")
    at.switch_page(_page("admin_import.py"))
    at.run()
    _upload(at, "bad.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    assert any("problem" in e for e in _errors(at)), _errors(at)
    problems = at.dataframe[0].value
    assert sorted(set(problems["line"])) == [2, 3]
    assert next(b for b in at.button if b.label == "Import").disabled
    with app_db.read() as session:
        from annotate.models import Comparison
        assert session.scalar(select(Comparison.id)) is None


def test_import_shows_file_level_problems(app_db, people):
    at = _login(_app(), "boss")
    at.switch_page(_page("admin_import.py"))
    at.run()
    at.file_uploader(key="import_file").upload("wrong.csv", b"question,answer\nhi,there\n", "text/csv")
    at.run()
    assert not at.exception
    assert len(_errors(at)) == 1 and "unrecognised CSV columns" in _errors(at)[0], _errors(at)
    assert not [b for b in at.button if b.label == "Import"]


def test_import_writes_after_preview(app_db, people):
    rows = [{"prompt": f"p{i}", "response_a": f"a{i}", "response_b": f"b{i}", "winner": "a"} for i in range(3)]
    at = _login(_app(), "boss")
    at.switch_page(_page("admin_import.py"))
    at.run()
    _upload(at, "good.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    assert not _errors(at)
    assert len(at.dataframe[0].value) == 3
    from annotate.models import Comparison
    with app_db.read() as session:
        assert session.scalar(select(Comparison.id)) is None  # the preview wrote nothing
    at.text_input(key="import_tag").input("batch-1")
    at.selectbox(key="import_known_winner").select("gold")
    at.number_input(key="import_overlap").set_value(2)
    next(b for b in at.button if b.label == "Import").click()
    at.run()
    assert not at.exception and not _errors(at), _errors(at)
    assert any("added 3 comparisons" in s.value for s in at.success)
    with app_db.read() as session:
        comparisons = list(session.scalars(select(Comparison)))
    assert {(c.source_tag, c.is_gold, c.gold_choice, c.overlap_target) for c in comparisons} == {
        ("batch-1", True, Choice.a, 2)}


def test_the_options_chosen_for_one_file_do_not_carry_over_to_the_next(app_db, people):
    """A dogfooding admin imported a gold file with tag hh-gold, chose the next file (rows tagged
    "adversarial") in the same uploader and pressed Import: its pairs were stored as hh-gold."""
    from annotate.models import Comparison

    def rows(tag, start):
        return "\n".join(json.dumps({"prompt": f"p{i}", "response_a": f"a{i}", "response_b": f"b{i}", "tag": tag})
                         for i in range(start, start + 2)).encode()

    at = _login(_app(), "boss")
    at.switch_page(_page("admin_import.py"))
    at.run()
    _upload(at, "gold.jsonl", rows("first", 0))
    at.text_input(key="import_tag").input("hh-gold")
    at.number_input(key="import_overlap").set_value(4)
    at.run()
    # two accounts, overlap 4, the campaign's maximum 3: said before importing
    assert [w.value for w in at.warning if w.value.startswith("overlap 4")] == [
        "overlap 4 is above the campaign's maximum overlap (3, the most adaptive overlap asks for and the Settings "
        "page allows): these comparisons need 4 judgments all the same",
        "overlap 4: each of these comparisons needs 4 judgments from different people (imported answers count), "
        "and 2 active accounts can annotate now: add accounts on the Users page, or pairs short of answers stay "
        "in the queue"]
    next(b for b in at.button if b.label == "Import").click()
    at.run()
    assert not _errors(at), _errors(at)
    _upload(at, "adversarial.jsonl", rows("adversarial", 2))
    assert at.text_input(key="import_tag").value == ""
    assert at.number_input(key="import_overlap").value == 1
    assert not [w for w in at.warning if w.value.startswith("overlap")]
    next(b for b in at.button if b.label == "Import").click()
    at.run()
    assert not _errors(at), _errors(at)
    with app_db.read() as session:
        assert sorted((c.source_tag, c.overlap_target) for c in session.scalars(select(Comparison))) == [
            ("adversarial", 1), ("adversarial", 1), ("hh-gold", 4), ("hh-gold", 4)]


def test_the_import_preview_shows_hidden_and_reordering_characters_as_markers(app_db, people):
    """st.dataframe shows text as is: a right-to-left override in a response reversed the preview's text
    ("txet desrever live") while the Review page showed it with markers."""
    row = {"prompt": "p\u200b1", "response_a": "safe. \u202eevil reversed\u202c end", "response_b": "b",
           "annotator": "r\u202e1"}
    at = _login(_app(), "boss")
    at.switch_page(_page("admin_import.py"))
    at.run()
    _upload(at, "bidi.jsonl", json.dumps(row).encode())
    [shown] = at.dataframe[0].value.to_dict("records")
    assert shown["prompt"] == "p\u27e8U+200B\u27e91"
    assert shown["response_a"] == "safe. \u27e8U+202E\u27e9evil reversed\u27e8U+202C\u27e9 end"
    assert shown["annotator"] == "r\u27e8U+202E\u27e91"


def test_users_page_adds_deactivates_changes_role_and_resets(app_db, people):
    at = _login(_app(), "boss")
    at.switch_page(_page("admin_users.py"))
    at.run()
    at.text_input(key="new_username").input("carol")
    next(t for t in at.text_input if t.label.startswith("Password")).input("a-long-password")
    at.selectbox(key="new_role").select("annotator")
    next(b for b in at.button if b.label == "Add user").click()
    at.run()
    assert not _errors(at), _errors(at)
    assert "carol" in list(at.dataframe[0].value["username"])

    at.selectbox(key="manage_user").select("carol")
    at.run()
    at.button(key="deactivate").click()
    at.run()
    at.selectbox(key="role_carol").select("admin")
    at.run()
    at.button(key="change_role").click()
    at.run()
    next(t for t in at.text_input if t.label == "New password").input("another-password")
    next(t for t in at.text_input if t.label == "Repeat the new password").input("another-password")
    next(b for b in at.button if b.label == "Reset password").click()
    at.run()
    assert not _errors(at), _errors(at)
    with app_db.read() as session:
        carol = session.scalar(select(User).where(User.username == "carol"))
        assert (carol.active, carol.role) == (False, Role.admin)
        from argon2 import PasswordHasher
        assert PasswordHasher().verify(carol.password_hash, "another-password")


def test_users_page_shows_service_errors(app_db, people):
    at = _login(_app(), "boss")
    at.switch_page(_page("admin_users.py"))
    at.run()
    at.selectbox(key="manage_user").select("boss")
    at.run()
    at.button(key="deactivate").click()
    at.run()
    assert _errors(at) == ["you cannot deactivate your own account"]
    assert not at.exception


@pytest.mark.postgres
def test_annotation_round_trip_on_postgresql(pg_clean_url, tmp_path, monkeypatch):
    from annotate.db import Database, create_db_engine
    from tests.factories import make_user

    monkeypatch.setenv("PREFLOOP_DATABASE_URL", pg_clean_url)
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PREFLOOP_GOLD_RATE", "0")
    monkeypatch.setenv("PREFLOOP_PROBE_RATE", "0")
    database = Database(create_db_engine(pg_clean_url))
    try:
        with database.begin() as session:
            annotator = make_user(session, "ann")
            make_comparisons(session, 2, chat=True)
        at = _login(_app(), "ann")
        assert [c.name for c in at.chat_message] == ["user", "assistant", "user"]
        cid, a_left = _shown_pair(at, database, annotator)
        _press(at, "judge_right").click()
        at.run()
        assert not at.exception and not _errors(at)
        [judgment] = _judgments(database, annotator)
        assert (judgment.comparison_id, judgment.choice) == (cid, Choice.b if a_left else Choice.a)
        _undo_button(at).click()
        at.run()
        assert _judgments(database, annotator)[0].state is JudgmentState.retracted
        assert _shown_pair(at, database, annotator)[0] == cid
    finally:
        database.dispose()


def test_remember_failures_keeps_the_reason_and_reraises():
    from annotate.errors import PrefloopError
    from annotate.ui.context import remember_failures

    failures: list[str] = []
    assert remember_failures(lambda: b"ok", failures)() == b"ok" and failures == []

    def refused():
        raise PrefloopError("no user named 'ghost'")

    def broken():
        raise ValueError("disk full")

    with pytest.raises(PrefloopError):
        remember_failures(refused, failures)()
    with pytest.raises(ValueError):
        remember_failures(broken, failures)()
    assert failures == ["no user named 'ghost'",
                        "ValueError: the server could not build the file (details in its log)"]


def _stop_on_errors_script():
    import sqlite3

    import streamlit as st
    from sqlalchemy.exc import OperationalError

    from annotate.errors import PrefloopError
    from annotate.ui import context

    kind = st.session_state.get("kind")
    with context.stop_on_errors():
        if kind == "user":
            raise PrefloopError("comparison 7 does not exist")
        if kind == "locked":
            raise OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked"))
        if kind == "deadlock":  # a PostgreSQL deadlock that outlasted Database.transact's retries
            import psycopg.errors

            raise OperationalError("UPDATE annotator_votes", {}, psycopg.errors.DeadlockDetected("deadlock"))
        if kind == "down":  # the statement mentions a lock column; only the driver's message counts
            raise OperationalError("SELECT users.locked_until FROM users", {},
                                   sqlite3.OperationalError("no such table: users"))
    st.write("page body")


@pytest.mark.parametrize("kind, message", [
    ("user", "comparison 7 does not exist"),
    ("locked", "The database is busy with other writes. Nothing was lost: press Try again in a moment."),
    ("deadlock", "The database is busy with other writes."),
    ("down", "The database cannot be reached or is not set up"),
    (None, None),
])
def test_pages_stop_with_a_message_not_a_traceback(kind, message):
    at = AppTest.from_function(_stop_on_errors_script, default_timeout=TIMEOUT)
    at.session_state["kind"] = kind
    at.run()
    assert not at.exception
    if message is None:
        assert _errors(at) == [] and _texts(at) == ["page body"]
    else:
        assert len(_errors(at)) == 1 and _errors(at)[0].startswith(message)
        assert "page body" not in _texts(at)  # the page stopped


@pytest.mark.parametrize("kind", ["locked", "deadlock", "down"])
def test_database_errors_offer_try_again_instead_of_a_reload(kind):
    """A reload starts a new, logged-out browser session: a page stopped by the database says to press
    Try again, and the button runs the page again in the same session."""
    at = AppTest.from_function(_stop_on_errors_script, default_timeout=TIMEOUT)
    at.session_state["kind"] = kind
    at.session_state["actor"] = "still logged in"
    at.run()
    [message] = _errors(at)
    assert "reload" not in message.lower() and "Try again" in message
    at.session_state["kind"] = None  # the database is back
    at.button(key="try_again").click().run()
    assert not at.exception and _errors(at) == [] and _texts(at) == ["page body"]
    assert at.session_state["actor"] == "still logged in"


def test_a_one_minute_idle_limit_is_said_in_the_singular(app_db, people, monkeypatch):
    monkeypatch.setenv("PREFLOOP_SESSION_IDLE_MINUTES", "1")
    at = _login(_app(), "ann")
    at.session_state["last_seen"] = time.time() - 120
    at.run()
    assert [i.value for i in at.info] == ["You were logged out after 1 minute without activity."]


def test_the_login_page_says_how_to_create_the_first_admin_until_one_exists(app_db, people):
    from sqlalchemy import update

    from annotate.models import User

    at = _app()
    assert not [i for i in at.info if "no admin account" in i.value]  # the fixture has an admin
    with app_db.begin() as s:
        # Written directly: accounts refuses to deactivate the only active admin (a database from
        # before that rule can still have none).
        s.execute(update(User).where(User.username == "boss").values(active=False))
    at = _app()
    hints = [i.value for i in at.info if "no admin account" in i.value]
    assert hints and "prefloop users add NAME --role admin" in hints[0], [i.value for i in at.info]


def test_the_login_pages_admin_hint_names_the_servers_database(app_db, people, tmp_path):
    """The hint said '.venv/bin/prefloop users add NAME --role admin' whatever PREFLOOP_DATA_DIR and
    PREFLOOP_DATABASE_URL the server used: copied, it made the admin in the default .prefloop/ database."""
    from sqlalchemy import update

    from annotate.models import User

    with app_db.begin() as s:
        s.execute(update(User).where(User.username == "boss").values(active=False))
    at = _app()
    [hint] = [i.value for i in at.info if "no admin account" in i.value]
    assert (f"`PREFLOOP_DATA_DIR={tmp_path / 'data'} PREFLOOP_DATABASE_URL=sqlite:///{tmp_path / 'prefloop.db'} "
            ".venv/bin/prefloop users add NAME --role admin` (it asks for the password)") in hint, hint


def test_the_import_preview_counts_one_row_in_the_singular(app_db, people):
    at = _login(_app(), "boss")
    at.switch_page(_page("admin_import.py"))
    at.run()
    _upload(at, "one.jsonl", json.dumps({"prompt": "p", "response_a": "a", "response_b": "b"}).encode())
    assert any(m.value.endswith("· 1 row · 1 comparison") for m in at.markdown), [m.value for m in at.markdown]


@pytest.mark.parametrize("presses", [(2,), (2, 2), (3, 1)])
def test_a_strength_pressed_in_the_same_run_as_the_judgment_counts_whatever_the_callbacks_order(
        app_db, people, presses):
    """Two keys the server takes in one run (2 then A with no pause, the second press arriving before the
    first one's run started): Streamlit runs the judge button's callback before the strength button's (the
    judge buttons are drawn first). The judgment must still carry the strength, and the strength button's
    own callback, run after it, must not change it twice. ``presses`` before the last are separate runs."""
    at, annotator = _annotating(app_db, people, 2)
    cid, _ = _shown_pair(at, app_db, annotator)
    for value in presses[:-1]:
        _choose_strength(at, cid, value)
    at.button(key=f"set_strength_{presses[-1]}_{cid}").click()
    _press(at, "judge_left").click()
    at.run()
    assert not at.exception
    expected = {(2,): 2, (2, 2): None, (3, 1): 1}[presses]
    [judgment] = _judgments(app_db, annotator)
    assert (judgment.comparison_id, judgment.strength) == (cid, expected)
    second, _ = _shown_pair(at, app_db, annotator)
    assert second != cid and _strength_shown(at, second) is None


def test_the_page_reads_back_what_the_latest_judgment_saved_and_undo_clears_it(app_db, people):
    """After each judgment the page says what the database holds for it (the side as the annotator saw
    it, the strength, a rationale, flags), so a dropped strength key shows; U takes it back."""
    at, annotator = _annotating(app_db, people, 3)
    first, _ = _shown_pair(at, app_db, annotator)
    assert not [c for c in at.caption if "Last saved" in c.value]
    _choose_strength(at, first, 3)
    at.text_input(key=f"rationale_{first}").input("terse")
    at.pills(key=f"flags_{first}").set_value(["unsafe", "not_english"])
    _press(at, "judge_right").click().run()
    [saved] = [c.value for c in at.caption if "Last saved" in c.value]
    assert saved == (f":material/check_circle: Last saved: pair #{first}, **B is better** (much better), "
                     "with a rationale, flagged not English, unsafe. **U** takes it back.")
    [judgment] = _judgments(app_db, annotator)
    assert (judgment.strength, judgment.rationale, judgment.flags) == (3, "terse", ["not_english", "unsafe"])
    second, _ = _shown_pair(at, app_db, annotator)
    _press(at, "judge_tie").click().run()
    assert [c.value for c in at.caption if "Last saved" in c.value] == [
        f":material/check_circle: Last saved: pair #{second}, **Tie**. **U** takes it back."]
    _undo_button(at).click().run()
    assert _shown_pair(at, app_db, annotator)[0] == second
    # What U would take back next: the judgment before, of the first pair.
    assert [c.value for c in at.caption if "Last saved" in c.value] == [saved]
    _press(at, "judge_both_bad").click().run()
    _press(at, "skip").click().run()  # a skip after it: U would bring back the skipped pair, not a judgment
    assert not [c for c in at.caption if "Last saved" in c.value]
