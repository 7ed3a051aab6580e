"""Double clicks on the admin console's state-changing actions, in a real browser.

The second click of a double click, 0 to 300 ms after the first, arrives while the first click's run is
still going or just after the page came back. A click during a run stops that run at its next
st.session_state access or element (see admin_users._rename), so what a page writes after its commit can be
lost. AppTest cannot interleave clicks; this file drives Debian's chromium (FAILS, never skips, when it or
playwright is missing) through one server and one browser session for every action. Each action is
double-clicked at several gaps and must happen once (one audit event), confirm itself and show no error.
Covered: Save settings, Retrain now; on the Users page Deactivate, Activate, Change role, Reset password (of
another account and the admin's own), Add user; on the Review page Unmark gold, Retire and Reopen. The cheaper replays of
these in AppTest: tests/ui/test_admin_double_press.py.
"""

from __future__ import annotations

import os
import time

import pytest
from sqlalchemy import select

from annotate import accounts, migrate, retrain
from annotate.db import Database, create_db_engine
from annotate.models import AuditEvent, Comparison
from tests.factories import make_comparisons, make_user
from tests.ui.test_e2e_browser import PASSWORD, TIMEOUT_MS, _settle, double_click, logged_in_page, streamlit_server

pytestmark = pytest.mark.browser

GAPS_MS = (0, 30, 100, 300)


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    """(page logged in as root, database): one server and one browser for the whole file."""
    from playwright.sync_api import expect

    tmp_path = tmp_path_factory.mktemp("double-clicks")
    url = f"sqlite:///{tmp_path / 'double.db'}"
    migrate.upgrade(url)
    database = Database(create_db_engine(url))
    with database.begin() as session:
        accounts.create_user(session, "root", PASSWORD, "admin", system=True)
        make_comparisons(session, 3, tag="double")
    expect.set_options(timeout=TIMEOUT_MS)
    # The retrain started by Retrain now finds no encoder and stops at once: nothing is trained in a test.
    with streamlit_server(url, tmp_path, PREFLOOP_GOLD_RATE="0", PREFLOOP_PROBE_RATE="0",
                          PREFLOOP_ENCODER_PATH=str(tmp_path / "no-encoder")) as base:
        try:
            with logged_in_page(base, "root") as page:
                expect(page.get_by_role("heading", name="Campaign overview")).to_be_visible()
                yield page, database
        finally:
            database.dispose()


def _errors(page) -> list[str]:
    return [e.inner_text() for e in page.get_by_test_id("stAlertContentError").all()]


def _shown(page, text: str) -> bool:
    return page.get_by_text(text, exact=False).count() > 0


def _audited(database, action: str) -> list[dict]:
    with database.read() as session:
        return [e.detail for e in session.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))]


def _open(page, link: str) -> None:
    page.get_by_role("link", name=link, exact=True).click()
    _settle(page)


def _outcome(page, confirmation: str, *also: str) -> dict:
    return {"confirmed": _shown(page, confirmation), "errors": _errors(page),
            **{text: _shown(page, text) for text in also}}


def test_settings_save(console):
    page, database = console
    _open(page, "Settings")
    seen = {}
    for i, gap in enumerate(GAPS_MS, start=1):
        box = page.get_by_role("spinbutton", name="Target judgments (0: none)")
        box.fill(str(100 * i))
        # Committed before the clicks (Tab leaves the box): with the suite and a second one running beside it,
        # 1 run in about 7 saved nothing for 200 at 30 ms, as if the form went with the value before the
        # click's blur committed it; what is tested here is the double click on Save.
        box.press("Tab")
        _settle(page)
        double_click(page, page.get_by_role("button", name="Save settings"), gap)
        # Waited for, as the other actions' are: read at once, the confirmation of a 0 ms double click was
        # missing in 1 of 24 beside two busy cores, and there in 48 of 48 when waited for.
        seen[gap] = {**_outcome(page, "Saved: target_judgments.", "Nothing changed."),
                     "confirmed": _confirmed(page, "Saved: target_judgments.")}
    saved = [d["changes"] for d in _audited(database, "settings.update")]
    assert saved == [{"target_judgments": 100 * i} for i in range(1, len(GAPS_MS) + 1)]
    assert seen == {gap: {"confirmed": True, "errors": [], "Nothing changed.": False} for gap in GAPS_MS}


def _wait_gone(pid: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.2)
    pytest.fail(f"the retrain process {pid} still runs after {timeout_s} s")


def test_retrain_now(console):
    from playwright.sync_api import expect

    page, database = console
    _open(page, "Reward model")
    seen = {}
    for gap in GAPS_MS:
        button = page.get_by_role("button", name="Retrain now")
        expect(button).to_be_enabled()
        double_click(page, button, gap)
        # Waited for, as Save settings' is: read at once after a 100 ms double click, the confirmation was
        # missing in 1 of 4 gaps in a CI run (1 run of about 30) with the audit showing the one retrain.
        seen[gap] = {**_outcome(page, "Retraining started in process"),
                     "confirmed": _confirmed(page, "Retraining started in process")}
        _wait_gone(_audited(database, "model.retrain")[-1]["pid"])  # the next press starts a new run,
        time.sleep(retrain.SAME_PRESS_SECONDS)  # once it cannot be the same press
        page.get_by_role("button", name="Refresh").click()
        _settle(page)
    assert (len(_audited(database, "model.retrain")), seen) == (
        len(GAPS_MS), {gap: {"confirmed": True, "errors": []} for gap in GAPS_MS})


def _confirmed(page, text: str) -> bool:
    """Whether ``text`` shows once the runs the clicks started are over (the second click's run may follow a
    rerun of the first), and still shows afterwards."""
    from playwright.sync_api import expect

    try:
        expect(page.get_by_text(text, exact=False).first).to_be_visible()
    except AssertionError:
        return False
    _settle(page)
    return _shown(page, text)


def _double_click(page, locator, gap_ms: int) -> None:
    """``double_click``, then Escape. The confirmations once showed above the forms and pushed them down, so a
    second click 300 ms later landed on the Role box above the button and opened its list, which covered the
    next control the test clicked (why this test was flaky, 3 of 6 runs, and dropped in 01b24f5). They show
    below now, but Activate's second click still opens the Deactivate… popover that took the button's place
    (it asks before acting): without the Escape the next choice of a Role failed 3 runs of 4."""
    double_click(page, locator, gap_ms)
    page.keyboard.press("Escape")
    _settle(page)


def _choose(page, box: str, option: str) -> None:
    page.locator('[data-testid="stSelectbox"]:visible').filter(has_text=box).click()
    page.get_by_role("option", name=option, exact=True).click()
    _settle(page)


def _reset_password(page, seen: dict, user: str, done: str, gap: int) -> None:
    _choose(page, "User", user)
    page.get_by_role("textbox", name="New password", exact=True).fill(f"new-password-{gap}")
    page.get_by_role("textbox", name="Repeat the new password").fill(f"new-password-{gap}")
    _double_click(page, page.get_by_role("button", name="Reset password"), gap)
    seen["reset " + user, gap] = _confirmed(page, done), _errors(page)


USERS_GAPS_MS = (0, 300)  # during the first click's run, and after the page came back


def test_users_page_actions(console):
    """Before: the admin's own reset logged the admin out (0-150 ms) or said the password was too short
    (300 ms, the emptied form); Add user said "already exists" (or that the name was invalid); another
    account's reset was made twice; Deactivate, Activate and Change role lost their confirmation at 300 ms."""
    page, database = console
    with database.begin() as session:
        make_user(session, "ann")
    _open(page, "Users")
    seen, roles = {}, iter(["admin", "annotator"])
    for gap in USERS_GAPS_MS:
        page.get_by_role("tab", name="Manage a user").click()
        _settle(page)
        _choose(page, "User", "ann")
        page.get_by_role("button", name="Deactivate…").click()
        _settle(page)  # the popover in place before the clicks aimed at its button
        _double_click(page, page.get_by_role("button", name="Deactivate ann"), gap)
        seen["deactivate", gap] = _confirmed(page, "Deactivated ann."), _errors(page)
        _double_click(page, page.get_by_role("button", name="Activate", exact=True), gap)
        seen["activate", gap] = _confirmed(page, "Activated ann."), _errors(page)
        role = next(roles)
        _choose(page, "Role", role)
        _double_click(page, page.get_by_role("button", name="Change role"), gap)
        seen["role", gap] = _confirmed(page, f"ann is now {role}."), _errors(page)
        _reset_password(page, seen, "ann", "Password of ann reset", gap)
        page.get_by_role("tab", name="Add a user").click()
        _settle(page)
        page.get_by_role("textbox", name="Username").fill(f"new{gap}")
        page.get_by_role("textbox", name="Password (at least").fill(PASSWORD)
        _double_click(page, page.get_by_role("button", name="Add user"), gap)
        seen["add", gap] = _confirmed(page, f"Added new{gap} (annotator)."), _errors(page)
    for gap in USERS_GAPS_MS:  # last: it logged the admin out
        page.get_by_role("tab", name="Manage a user").click()
        _settle(page)
        _reset_password(page, seen, "root", "Your password was reset.", gap)
        if page.get_by_role("button", name="Log in").count():
            seen["root logged out", gap] = True
            page.get_by_role("textbox", name="Username").fill("root")
            page.get_by_role("textbox", name="Password").fill(f"new-password-{gap}")
            page.get_by_role("button", name="Log in").click()
        _open(page, "Users")  # the next click: its link is there for a logged-in admin only
    assert {(action, gap): outcome for (action, gap), outcome in seen.items() if outcome != (True, [])} == {}
    per_action = {action: len(_audited(database, action)) for action in (
        "user.deactivate", "user.activate", "user.role", "user.reset_password")}
    created = [d["username"] for d in _audited(database, "user.create")]
    assert (per_action, created[-len(USERS_GAPS_MS):]) == (
        {"user.deactivate": 2, "user.activate": 2, "user.role": 2, "user.reset_password": 4},
        [f"new{gap}" for gap in USERS_GAPS_MS])


def _review(page, pair: int) -> None:
    """Show ``pair`` on the Review page."""
    box = page.get_by_role("spinbutton", name="Comparison id")
    box.fill(str(pair))
    box.press("Enter")
    _settle(page)


def test_unmark_gold(console):
    """Before: its confirmation was lost at 0-300 ms, most often at 300 ms (there one double click in two or
    three): 300 ms thrice."""
    page, database = console
    gaps = (*GAPS_MS, 300, 300)
    with database.begin() as session:
        pairs = make_comparisons(session, len(gaps), gold=True, tag="double-gold")
    _open(page, "Review")
    seen = []
    for gap, pair in zip(gaps, pairs):
        _review(page, pair)
        double_click(page, page.get_by_role("button", name="Unmark gold"), gap)
        seen.append((gap, _confirmed(page, f"Comparison {pair} is no longer a gold pair."), _errors(page)))
    assert (len(_audited(database, "gold.unmark")), seen) == (len(gaps), [(gap, True, []) for gap in gaps])
    # The confirmation was above the form, which it pushed down onto where Unmark gold had been: a second
    # click at 300 ms (under load) pressed Mark as gold, with the old answer still in the box, and marked
    # the pair again (no confirmation of the unmark, one gold.mark entry).
    assert _audited(database, "gold.mark") == []
    with database.read() as session:
        assert [c.is_gold for c in map(lambda i: session.get(Comparison, i), pairs)] == [False] * len(gaps)


def test_retire_and_reopen(console):
    """Retire is confirmed in a popover and Reopen takes its place: a double click on either does it once,
    confirms it, and its second click does not undo it (on Reopen, or on Retire… where Reopen was)."""
    page, database = console
    with database.begin() as session:
        pairs = make_comparisons(session, len(GAPS_MS), tag="double-retire")
    _open(page, "Review")
    seen = []
    for gap, pair in zip(GAPS_MS, pairs):
        _review(page, pair)
        page.get_by_role("button", name="Retire…").click()
        double_click(page, page.get_by_role("button", name=f"Retire comparison {pair}"), gap)
        retired = _confirmed(page, f"Comparison {pair} is retired."), _errors(page)
        double_click(page, page.get_by_role("button", name="Reopen"), gap)
        seen.append((gap, retired, (_confirmed(page, f"Comparison {pair} is back in the campaign."),
                                    _errors(page))))
    assert seen == [(gap, (True, []), (True, [])) for gap in GAPS_MS]
    assert [d["comparison_id"] for d in _audited(database, "comparison.retire")] == list(pairs)
    assert [d["comparison_id"] for d in _audited(database, "comparison.reopen")] == list(pairs)
    with database.read() as session:
        assert {session.get(Comparison, i).status.value for i in pairs} == {"open"}
