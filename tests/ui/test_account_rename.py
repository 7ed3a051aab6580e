"""A user renamed while logged in (``prefloop users rename``) stays logged in under the new name."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from annotate import accounts
from tests.factories import PASSWORD
from tests.ui.conftest import APP


def test_a_renamed_user_stays_logged_in_under_the_new_name(app_db):
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    at.text_input(key="login_username").input("ann")
    next(t for t in at.text_input if t.label == "Password").input(PASSWORD)
    at.button[0].click()
    at.run()
    assert "Signed in as **ann** (annotator)" in [c.value for c in at.sidebar.caption]
    with app_db.begin() as session:
        accounts.rename_user(session, "ann", "anna", system=True)
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["actor"].username == "anna"
    assert "Signed in as **anna** (annotator)" in [c.value for c in at.sidebar.caption]
    assert not at.info  # no "You were logged out because ..."
