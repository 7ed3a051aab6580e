"""Renaming an account on the Users page: ``accounts.rename_user``, its refusals said in the form."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from annotate import accounts
from annotate.models import AuditEvent, User
from tests.factories import make_user
from tests.ui.conftest import open_page
from tests.ui.test_e2e_browser import seeded, server  # noqa: F401 - seeded and server are fixtures

INVALID = "usernames are 1-64 ASCII letters, digits, '.', '_' or '-'"
RENAMED = ("Renamed ann to anna. They log in as anna from now on; "
           "their judgments stay theirs and their open sessions stay logged in.")


def _manage(admin, username: str) -> AppTest:
    at = open_page(admin, "admin_users.py")
    at.session_state["users_tab"] = "Manage a user"
    at.run()
    at.selectbox(key="manage_user").set_value(username).run()
    return at


def _type_rename(at: AppTest, old: str, new: str) -> AppTest:
    at.text_input(key=f"rename_to_{old}").input(new)
    at.button(key=f"FormSubmitter:rename_form_{old}-Rename {old}").click()
    return at


def _in_manage_tab(at: AppTest, kind: str) -> list[str]:
    [tab] = [t for t in at.tabs if t.label == "Manage a user"]
    return [alert.value for alert in tab.get(kind)]


def _names_and_renames(app_db) -> tuple[list[str], list[dict]]:
    with app_db.read() as s:
        return (sorted(s.scalars(select(User.username))),
                [e.detail for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "user.rename"))])


def test_an_admin_renames_a_user_and_the_page_follows_the_account(app_db, people):
    at = _manage(people[1], "ann")
    _type_rename(at, "ann", " anna ").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert _in_manage_tab(at, "success") == [RENAMED]
    assert at.selectbox(key="manage_user").value == "anna"  # still managing the same account
    assert at.text_input(key="rename_to_anna").value == ""
    assert _names_and_renames(app_db) == (["anna", "boss"], [{"username": "anna", "old_username": "ann"}])
    # The next click, e.g. the second of a double click landing after the page came back on whatever replaced
    # the button: the account is still chosen and the confirmation stays (it was shown once, then lost).
    at.run()
    assert at.selectbox(key="manage_user").value == "anna" and _in_manage_tab(at, "success") == [RENAMED]
    at.selectbox(key="manage_user").set_value("boss").run()  # another user: the confirmation is gone
    assert not at.success
    at.selectbox(key="manage_user").set_value("anna").run()
    assert _in_manage_tab(at, "success") == [RENAMED]
    at.selectbox(key="role_anna").set_value("admin").run()
    at.button(key="change_role").click().run()  # another action's confirmation replaces it
    assert _in_manage_tab(at, "success") == ["anna is now admin."]


@pytest.mark.parametrize(("new", "message"), [
    ("boss", "user 'boss' already exists"),
    ("BOSS", "user 'boss' already exists; names must differ by more than case"),
    ("carol", "user 'Carol' already exists; names must differ by more than case"),
    ("Émile", INVALID), ("ann bob", INVALID), ("x" * 65, INVALID), ("", INVALID), ("  ", INVALID),
    ("ann", "user 'ann' is already called that"),
])
def test_a_refused_rename_says_why_in_the_form_and_changes_nothing(app_db, people, new, message):
    with app_db.begin() as s:
        make_user(s, "Carol")
    at = _manage(people[1], "ann")
    _type_rename(at, "ann", new).run()
    assert not at.exception, at.exception
    [form] = [f for f in at.get("form") if f.proto.form.form_id == "rename_form_ann"]
    assert [e.value for e in form.get("error")] == [message] == [e.value for e in at.error]
    assert not at.success
    assert at.text_input(key="rename_to_ann").value == new  # kept, to be corrected
    assert _names_and_renames(app_db) == (["Carol", "ann", "boss"], [])


def test_changing_only_the_case_of_a_name_is_a_rename(app_db, people):
    at = _manage(people[1], "ann")
    _type_rename(at, "ann", "Ann").run()
    assert not at.error and at.selectbox(key="manage_user").value == "Ann"
    assert _names_and_renames(app_db) == (["Ann", "boss"], [{"username": "Ann", "old_username": "ann"}])


def test_a_double_press_renames_once_and_says_nothing_confusing(app_db, people):
    """The second press of a double click leaves the browser before the page comes back: it carries the
    same widget values as the first (user box "ann", the text "anna", Rename pressed). Replayed, it used to
    find the account gone or (were the user box moved on to "anna") "user 'anna' is already called that"."""
    at = _manage(people[1], "ann")
    press = _type_rename(at, "ann", "anna")._tree.get_widget_states()
    for _ in range(2):
        at._run(press)
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert _in_manage_tab(at, "success") == [RENAMED]
        assert at.selectbox(key="manage_user").value == "anna"
    assert _names_and_renames(app_db) == (["anna", "boss"], [{"username": "anna", "old_username": "ann"}])


def test_an_admin_renaming_themselves_stays_logged_in_under_the_new_name(app_db, people):
    at = _manage(people[1], "boss")
    _type_rename(at, "boss", "chief").run()
    assert not at.error and at.selectbox(key="manage_user").value == "chief"
    at.run()
    assert at.session_state["actor"].username == "chief"
    assert [t.value for t in at.title] == ["Users"] and "Signed in as **chief** (admin)" in [
        c.value for c in at.sidebar.caption]


def test_a_rename_pressed_after_the_admin_lost_the_role_renames_nothing(app_db, people):
    """The page was open when another admin demoted this one: the press is refused, not carried out."""
    at = _manage(people[1], "ann")
    with app_db.begin() as s:
        make_user(s, "other", "admin")
        accounts.set_role(s, "boss", "annotator", system=True)
    _type_rename(at, "ann", "anna").run()
    assert not at.exception, at.exception
    # Now an annotator: the page's address says it is for admins, and shows none of the page.
    assert [w.value for w in at.warning if "is for admins" in w.value] and not at.text_input and not at.tabs
    assert _names_and_renames(app_db) == (["ann", "boss", "other"], [])


@pytest.mark.browser
def test_a_double_click_on_rename_in_a_browser_renames_once_and_nothing_is_cut_off(server, seeded):
    """The second click of a double click, 0 to 300 ms after the first, lands where "Rename annie" was: one
    rename, its confirmation and no error. A click during the rename's run stops that run at its next use of
    st.session_state: the rename was remembered after the commit, and at 30 ms one double click in 5-7 lost
    the memory (no confirmation, no user chosen). The manage tab with the popover open cuts no text at 1280
    or 800 px."""
    from playwright.sync_api import expect

    from tests.ui.test_admin_browser import _CUT_TEXT_JS
    from tests.ui.test_e2e_browser import TIMEOUT_MS, _settle, double_click, logged_in_page

    _, database = seeded
    gaps_ms = (0, 20, 30, 30, 30, 40, 50, 100, 300)
    names = ["annie"] + [f"ann{i}" for i in range(1, len(gaps_ms) + 1)]
    expect.set_options(timeout=TIMEOUT_MS)
    errors, cut = [], {}
    with logged_in_page(server, "root") as page:
        page.get_by_role("link", name="Users").click()
        page.get_by_role("tab", name="Manage a user").click()
        page.get_by_test_id("stSelectbox").filter(has_text="User").click()
        page.get_by_role("option", name="annie", exact=True).click()
        for old, new, gap_ms in zip(names, names[1:], gaps_ms):
            _settle(page)
            page.get_by_role("button", name="Rename…").click()
            _settle(page)
            page.get_by_role("textbox", name="New username").fill(new)
            if old == "annie":
                for width in (1280, 800):
                    page.set_viewport_size({"width": width, "height": 1000})
                    _settle(page)
                    cut[width] = page.evaluate(_CUT_TEXT_JS)
                page.set_viewport_size({"width": 1280, "height": 1000})
            double_click(page, page.get_by_role("button", name=f"Rename {old}"), gap_ms)
            expect(page.get_by_text(f"Renamed {old} to {new}.")).to_be_visible()
            # closed after the rename: a click where "Rename annie" was cannot submit "Rename ann1"
            expect(page.get_by_role("textbox", name="New username")).to_have_count(0)
            errors += [e.inner_text() for e in page.get_by_test_id("stAlertContentError").all()]
    with database.read() as session:
        renames = [e.detail["username"] for e in session.scalars(
            select(AuditEvent).where(AuditEvent.action == "user.rename").order_by(AuditEvent.id))]
    assert (renames, errors) == (names[1:], [])
    assert cut == {1280: [], 800: []}
