"""The second press of a double click on the Users and Review pages, without a browser (AppTest).

A click that arrives while the page still handles the one before stops that run at its next use of
st.session_state (see admin_users._manage_action), so the second press either replays the first one's
values or lands, after the page came back, on whatever replaced the button and reruns the page. AppTest
cannot interleave clicks; it replays the press, or reruns, as the second click would. The real thing, in
chromium at 0-300 ms: tests/ui/test_admin_double_clicks.py.
"""

from __future__ import annotations

from sqlalchemy import select

from annotate.models import AuditEvent, Comparison
from tests.factories import make_comparisons, make_user
from tests.ui.conftest import open_page


def _audited(app_db, action: str) -> list[dict]:
    with app_db.read() as session:
        return [e.detail for e in session.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))]


def _said(at) -> tuple[list[str], list[str]]:
    return [s.value for s in at.success], [e.value for e in at.error]


def _manage(admin, username: str):
    at = open_page(admin, "admin_users.py")
    at.session_state["users_tab"] = "Manage a user"
    at.run()
    at.selectbox(key="manage_user").set_value(username).run()
    return at


def test_a_users_action_stays_confirmed_through_the_next_rerun_while_its_user_is_chosen(app_db, people):
    """The second click landed on what replaced Deactivate (or Activate, or a disabled Change role) and
    reran the page: the confirmation, shown once after the action, was gone."""
    at = _manage(people[1], "ann")
    steps = [(lambda: at.button(key="deactivate").click(), "Deactivated ann."),
             (lambda: at.button(key="activate").click(), "Activated ann."),
             (lambda: (at.selectbox(key="role_ann").set_value("admin").run(), at.button(key="change_role").click()),
              "ann is now admin.")]
    for press, message in steps:
        press()
        at.run()
        assert _said(at) == ([message], [])
        at.run()  # the second click, landing on something else
        assert _said(at) == ([message], []), message
    at.selectbox(key="manage_user").set_value("boss").run()
    assert _said(at) == ([], [])  # said about ann only
    with app_db.begin() as session:  # another admin changes ann again: the confirmation no longer holds
        from annotate import accounts
        accounts.set_role(session, "ann", "annotator", system=True)
    at.selectbox(key="manage_user").set_value("ann").run()
    assert _said(at) == ([], [])


def _reset(at, password: str):
    at.text_input(key="reset_password_text").input(password)
    at.text_input(key="reset_password_repeat").input(password)
    at.button(key="FormSubmitter:reset_password-Reset password").click().run()
    assert not at.exception, at.exception
    return _said(at)


def test_a_reset_pressed_again_with_the_same_password_resets_once_and_confirms(app_db, people):
    """The second press carried the same password and reset it again (a second audit entry, the first
    press's confirmation lost); the admin's own reset pressed twice logged the admin out (in a browser)."""
    at = _manage(people[1], "ann")
    at.button(key="deactivate").click().run()  # an empty press after another action is refused
    assert _reset(at, "") == (["Deactivated ann."], ["passwords need at least 8 characters"])
    done = ["Password of ann reset (and any lockout lifted)."]
    assert _reset(at, "ann-new-password") == (done, [])
    assert _reset(at, "ann-new-password") == (done, [])  # the second press of the double click
    assert [at.text_input(key=k).value for k in ("reset_password_text", "reset_password_repeat")] == ["", ""]
    assert len(_audited(app_db, "user.reset_password")) == 1
    assert _reset(at, "ann-new-password") == (done, [])  # a later press resets again
    assert _reset(at, "ann-other-password") == (done, [])
    assert len(_audited(app_db, "user.reset_password")) == 3
    # the second click landing on the emptied form said "passwords need at least 8 characters"
    assert _reset(at, "") == (done, [])
    assert _reset(at, "") == (done, ["passwords need at least 8 characters"])  # a later empty press is refused

    at.selectbox(key="manage_user").set_value("boss").run()
    own = ["Your password was reset. You are still logged in here; your other sessions were logged out."]
    assert _reset(at, "boss-new-password") == (own, [])
    assert _reset(at, "boss-new-password") == (own, [])
    at.run()
    assert [t.value for t in at.title] == ["Users"] and len(_audited(app_db, "user.reset_password")) == 4


def _add(at, name: str, password: str = "a-long-password", role: str = "annotator"):
    at.text_input(key="new_username").input(name)
    next(t for t in at.text_input if t.label.startswith("Password")).input(password)
    at.selectbox(key="new_role").set_value(role)
    at.button(key="FormSubmitter:add_user-Add user").click().run()
    assert not at.exception, at.exception
    return _said(at)


def test_add_user_pressed_again_confirms_the_account_it_made_and_refuses_a_taken_name(app_db, people):
    """The second press carried the same values and said "user 'carol' already exists" about the account the
    first press had just made. A name taken otherwise is still refused: by a later press, by another admin,
    or a press with another password or role."""
    at = open_page(people[1], "admin_users.py")
    assert _add(at, "carol") == (["Added carol (annotator)."], [])
    assert _add(at, "carol") == (["Added carol (annotator)."], [])  # the second press of the double click
    assert _add(at, "carol") == ([], ["user 'carol' already exists"])  # a later press
    assert _add(at, "dave", role="admin") == (["Added dave (admin)."], [])
    assert _add(at, "dave") == ([], ["user 'dave' already exists"])  # not what dave was added with
    with app_db.begin() as session:
        make_user(session, "erin")  # by another admin
    assert _add(at, "erin") == ([], ["user 'erin' already exists"])
    created = [d["username"] for d in _audited(app_db, "user.create")]
    assert (created.count("carol"), created.count("dave")) == (1, 1)


def test_add_user_pressed_on_the_emptied_form_says_only_the_confirmation(app_db, people):
    """The second click landed after the page came back, on the emptied form: it said the username was
    invalid."""
    at = open_page(people[1], "admin_users.py")
    assert _add(at, "carol") == (["Added carol (annotator)."], [])
    at.button(key="FormSubmitter:add_user-Add user").click().run()
    assert _said(at) == (["Added carol (annotator)."], [])
    at.button(key="FormSubmitter:add_user-Add user").click().run()  # a later empty press is refused
    assert _said(at) == ([], ["usernames are 1-64 ASCII letters, digits, '.', '_' or '-'"])


def test_unmark_gold_stays_confirmed_through_the_next_rerun_while_the_pair_is_shown(app_db, people):
    """The second click landed where Unmark gold was and reran the page: its confirmation was gone."""
    with app_db.begin() as session:
        first, second = make_comparisons(session, 2, gold=True, tag="double")
    at = open_page(people[1], "review.py")
    at.number_input(key="review_id").set_value(first).run()
    at.button(key="unmark_gold").click().run()
    done = [f"Comparison {first} is no longer a gold pair."]
    assert _said(at) == (done, [])
    at.run()  # the second click, landing on something else
    assert _said(at) == (done, [])
    at.number_input(key="review_id").set_value(second).run()
    assert _said(at) == ([], [])
    with app_db.read() as session:
        assert [session.get(Comparison, c).is_gold for c in (first, second)] == [False, True]
    assert len(_audited(app_db, "gold.unmark")) == 1
