"""What an annotator ran into, driving the app in a browser as one would (login, judging, a narrow window).

The login test is an AppTest; the narrow-window one drives Debian's chromium (FAILS, never skips, when
it or playwright is missing), through the server and seeded database of tests/ui/test_e2e_browser.py.
"""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.ui.conftest import ANNOTATOR, APP
from tests.ui.test_e2e_browser import _settle, logged_in_page, seeded, server  # noqa: F401 (fixtures)


def test_a_wrong_password_says_so_under_the_form_without_a_try_again_button(app_db, people):
    """The form is how one tries again: a Try again button under "wrong username or password" only
    ran the page again, with the wrong password still in the form, and left the annotator guessing
    whether it had logged in again."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.text_input(key="login_username").input(ANNOTATOR)
    next(t for t in at.text_input if t.label == "Password").input("not-the-password")
    next(b for b in at.button if b.label == "Log in").click()
    at.run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == ["wrong username or password"]
    assert [b.label for b in at.button] == ["Log in"]
    assert "actor" not in at.session_state


@pytest.mark.browser
def test_in_a_narrow_window_the_counters_sit_side_by_side(server):  # noqa: F811 (fixture)
    """At 420 px st.columns stacked "Judged today" over "Remaining", about 90 px of header more
    before the prompt; the two counters now share a row."""
    with logged_in_page(server, "annie", width=420) as page:
        metrics = page.get_by_test_id("stMetric")
        metrics.first.wait_for()
        _settle(page)
        boxes = [m.bounding_box() for m in metrics.all()]
        assert len(boxes) == 2
        (today, left) = boxes
        assert abs(today["y"] - left["y"]) < 1, boxes
        assert today["x"] + today["width"] <= left["x"], boxes
        assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth")
