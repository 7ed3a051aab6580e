"""AppTest tests of the admin console pages on a seeded SQLite database."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from streamlit.testing.v1 import AppTest

from annotate import campaign
from annotate.accounts import Actor
from annotate.models import (
    AppSetting,
    AuditEvent,
    Comparison,
    ComparisonStatus,
    Judgment,
    ModelVersion,
    User,
    utcnow,
)
from annotate.settings import load_settings
from tests.factories import make_comparisons
from tests.ui.conftest import APP, PAGES, open_page

TIMEOUT = 60
CONSOLE_PAGES = ["overview.py", "annotators.py", "model_health.py", "review.py", "settings.py", "audit.py"]


def _seed(app_db, people):
    """Two annotators: ``ann`` presses left on 30 pairs; the admin (also annotating) agrees with the truth."""
    annotator, admin = people
    now = utcnow() - timedelta(minutes=5)
    with app_db.begin() as s:
        cids = make_comparisons(s, 30, overlap=2)
        for i, cid in enumerate(cids):
            s.add(Judgment(comparison_id=cid, annotator_id=annotator.id, choice="a", a_on_left=True,
                           time_spent_ms=500, created_at=now, rationale="left looks fine" if i == 0 else None))
            s.add(Judgment(comparison_id=cid, annotator_id=admin.id, choice="b" if i % 3 else "a",
                           a_on_left=bool(i % 2), time_spent_ms=30_000, created_at=now))
        s.execute(update(Comparison).where(Comparison.id.in_(cids)).values(
            judgment_count=2, status=ComparisonStatus.complete))
        s.execute(update(Comparison).where(Comparison.id == cids[0]).values(model_p_a=0.05))
        s.add(ModelVersion(artifact_path="/m", encoder_id="enc", is_active=True, n_train=60,
                           metrics={"accuracy": 0.74, "ece": 0.05, "calibration": [
                               {"lower": 0.0, "upper": 0.1, "predicted": 0.05, "observed": 0.1, "count": 4}]}))
        make_comparisons(s, 4, start=100)
        s.add(AppSetting(key="target_judgments", value=120))
        s.add(AuditEvent(actor_id=admin.id, action="import", detail={"file": "pairs.jsonl"}))
    return cids


def _open(actor: Actor | None, page: str) -> AppTest:
    return open_page(actor, page, TIMEOUT)


def _frame_with(at: AppTest, column: str):
    """The first table on the page that has ``column`` (a Styler's data when styled)."""
    for element in at.dataframe:
        frame = element.value
        frame = frame.data if hasattr(frame, "data") and not hasattr(frame, "columns") else frame
        if column in frame.columns:
            return frame
    raise AssertionError(f"no table with a {column!r} column")


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_overview_shows_the_seeded_figures(app_db, people):
    _seed(app_db, people)
    at = _open(people[1], "overview.py")
    m = _metrics(at)
    assert [t.value for t in at.title] == ["Campaign overview"]
    assert m["Prompts"] == "34" and m["Comparisons"] == "34" and m["Judgments"] == "60"
    assert m["Open"] == "4" and m["Complete"] == "30" and m["Queue depth"] == "4"
    assert m["Annotating now"] == "2"
    assert m["Judgments (last 24 hours)"] == "60"
    assert m["Median time per judgment"] == "15.2 s"  # halfway between 0.5 s and 30 s
    assert m["Active model"].startswith("v") and m["Held-out accuracy"] == "0.740"
    assert any("60 of 120 judgments" in p.proto.text for p in at.get("progress"))


def test_overview_hour_chart_is_in_utc_and_says_so(app_db, people):
    """No browser zone (AppTest has none): UTC, and the axis says whose. The hours are UTC instants (an aware
    column) that Vega-Lite draws on the browser's clock (local time units, no utc), as the axis's
    domain is given (the browser test draws it in Kolkata)."""
    import json

    _seed(app_db, people)
    at = _open(people[1], "overview.py")
    [chart] = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    assert chart["encoding"]["x"]["timeUnit"] == chart["encoding"]["x2"]["timeUnit"] == "yearmonthdatehoursminutes"
    assert chart["encoding"]["x"]["title"] == "hour (UTC)"
    assert not any(d.get("utc") for d in chart["encoding"]["x"]["scale"]["domain"])


def test_admin_times_follow_the_browsers_time_zone(app_db, people, monkeypatch):
    """In Kolkata (UTC+5:30, a half-hour zone) the overview's times, its hour chart and the audit table read
    the browser's wall clock and name its zone."""
    import json
    import re
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from annotate.ui import context

    _seed(app_db, people)
    with app_db.begin() as s:
        s.add(AuditEvent(actor_id=people[1].id, action="user.create", detail={"username": "x"},
                         created_at=datetime(2026, 3, 1, 20, 15)))
    monkeypatch.setattr(context, "browser_zone", lambda: ZoneInfo("Asia/Kolkata"))
    at = _open(people[1], "overview.py")
    [as_of] = [c.value for c in at.caption if c.value.startswith("As of")]
    shown = datetime.strptime(re.search(r"As of (\S+ \S+) \(Asia/Kolkata\)", as_of).group(1), "%Y-%m-%d %H:%M:%S")
    now = datetime.now(ZoneInfo("Asia/Kolkata")).replace(tzinfo=None)
    assert timedelta(0) <= now - shown < timedelta(minutes=5), (as_of, now)
    [chart] = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    assert chart["encoding"]["x"]["title"] == "hour (Asia/Kolkata)"
    assert {d["minutes"] for d in chart["encoding"]["x"]["scale"]["domain"]} == {30}  # UTC hours at :30 there

    at = _open(people[1], "audit.py")
    [frame] = at.dataframe
    when = frame.value.loc[frame.value["action"] == "user.create", "when"].tolist()
    assert datetime(2026, 3, 2, 1, 45) in [w.to_pydatetime() for w in when]
    assert "Times in Asia/Kolkata, your browser's time zone." in [c.value for c in at.caption]


def test_overview_before_any_run_states_the_whole_first_retrain_rule(app_db, people):
    at = _open(people[1], "overview.py")  # no judgments, no run
    [caption] = [c.value for c in at.caption if c.value.startswith("No training run yet")]
    assert "after 50 new judgments" in caption and "retrain interval" in caption


def test_overview_next_retrain_shows_the_watchers_wait_after_a_failed_run(app_db, people):
    from annotate.models import TrainingRun

    _seed(app_db, people)  # 60 new judgments, no run yet: due on labels
    at = _open(people[1], "overview.py")
    assert any(c.value.startswith("Next retrain: due now (60 new judgments)") for c in at.caption)
    with app_db.begin() as s:
        s.add(TrainingRun(status="failed", step="train", error="disk full", started_at=utcnow(),
                          finished_at=utcnow()))
    at.button(key="overview_refresh").click().run(timeout=TIMEOUT)  # the figures are cached for 30 s
    captions = [c.value for c in at.caption if c.value.startswith("Next retrain")]
    assert len(captions) == 1 and "not before" in captions[0]
    assert "(60 new judgments; the last run failed, next try" in captions[0]


def test_overview_counts_one_judgment_in_the_singular(app_db, people):
    """It read "Next retrain: due now (1 new judgments)" and "1 new judgments since"."""
    from annotate.models import TrainingRun

    annotator, admin = people
    with app_db.begin() as s:
        [cid] = make_comparisons(s, 1)
        s.add(TrainingRun(status="succeeded", started_at=utcnow() - timedelta(hours=2),
                          finished_at=utcnow() - timedelta(hours=1), counts={"max_judgment_id": 0}))
        s.add(Judgment(comparison_id=cid, annotator_id=annotator.id, choice="a", a_on_left=True, time_spent_ms=500))
        s.add(AppSetting(key="retrain_every_labels", value=1))
        s.add(AppSetting(key="target_judgments", value=1))
    at = _open(admin, "overview.py")
    captions = [c.value for c in at.caption]
    assert any(c.startswith("Next retrain: due now (1 new judgment)") for c in captions), captions
    assert any(c.endswith("1 new judgment since.") for c in captions), captions
    assert any(p.proto.text.startswith("1 of 1 judgment (") for p in at.get("progress"))
    [until] = [m for m in at.metric if m.label == "Labels until next retrain"]
    assert "retrains after 1 new judgment," in until.proto.help
    assert not [c for c in captions if re.search(r"\b1 (new )?judgments\b", c)], captions


def test_overview_says_when_a_run_was_left_running_by_a_watcher_that_died(app_db, people):
    """A watcher killed mid-run leaves its run "running"; the overview said "running" for good."""
    from annotate.models import TrainingRun

    _seed(app_db, people)
    with app_db.begin() as s:
        s.add(TrainingRun(status="running", step="embed", started_at=utcnow() - timedelta(minutes=3),
                          host="elsewhere", pid=999_999))
    at = _open(people[1], "overview.py")
    [last] = [c.value for c in at.caption if c.value.startswith("Last training run")]
    assert "stopped at step embed without finishing (its process is gone" in last, last
    assert "the next run marks it failed. 60 new judgments since." in last


def test_overview_with_a_setting_out_of_range_says_which_instead_of_crashing(app_db, people, monkeypatch):
    """With PREFLOOP_RETRAIN_EVERY_MINUTES=nan (the watcher beside it died of it) the page showed "This app
    has encountered an error"."""
    _seed(app_db, people)
    monkeypatch.setenv("PREFLOOP_RETRAIN_EVERY_MINUTES", "nan")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["actor"] = people[1]
    at.run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == [
        "PREFLOOP_RETRAIN_EVERY_MINUTES must be from 0.1 to 525,600 (a year), not nan"]


def test_annotators_page_flags_the_left_clicker(app_db, people):
    _seed(app_db, people)
    at = _open(people[1], "annotators.py")
    m = _metrics(at)
    assert m["Annotators"] == "2" and m["Flagged"] != "0"
    by = _frame_with(at, "left_rate").set_index("annotator")
    assert by.loc["ann", "left_rate"] == 1.0
    assert "picks one side" in by.loc["ann", "flags"]
    assert "picks one side" not in by.loc["boss", "flags"]
    assert any("ann" in w.value and "picks one side" in w.value for w in at.warning)


def test_model_health_and_review_and_gold(app_db, people):
    cids = _seed(app_db, people)
    at = _open(people[1], "model_health.py")
    m = _metrics(at)
    assert m["Held-out accuracy"] == "0.740" and m["ECE"] == "0.050"
    dis = _frame_with(at, "human_a")
    assert list(dis["comparison_id"]) == [cids[0]]

    at = _open(people[1], "review.py")
    at.number_input(key="review_id").set_value(cids[0]).run()
    assert not at.exception, at.exception
    assert _frame_with(at, "choice")["annotator"].tolist() == ["ann", "boss"]
    assert any("left looks fine" in md.value for md in at.markdown)
    at.selectbox(key=f"gold_choice_{cids[0]}_-").set_value("b")
    at.button[0].click().run()  # the form's submit button
    assert not at.exception, at.exception
    with app_db.read() as s:
        c = s.get(Comparison, cids[0])
        assert c.is_gold and c.gold_choice.value == "b"
    at.number_input(key="review_id").set_value(99_999).run()
    assert any("does not exist" in e.value for e in at.error)


def test_settings_page_saves_and_shows_validation_errors(app_db, people):
    at = _open(people[1], "settings.py")
    # The inputs stop at the single-field limits; a rule across fields is checked on save.
    at.number_input(key="opt_overlap").set_value(5)
    at.number_input(key="opt_max_overlap").set_value(4)
    at.button[0].click().run()
    assert any("overlap must be at least 1 and at most the maximum overlap" in e.value for e in at.error)
    at.number_input(key="opt_overlap").set_value(1)
    at.number_input(key="opt_gold_rate").set_value(0.1)
    assert "random+cover" not in at.selectbox(key="opt_strategy").options  # only names the job accepts
    at.selectbox(key="opt_strategy").set_value("margin")
    at.number_input(key="opt_batch_size").set_value(8)
    at.number_input(key="opt_cold_start").set_value(10)
    at.button[0].click().run()
    assert not at.exception, at.exception
    settings = load_settings()
    with app_db.read() as s:
        options = campaign.get_options(s, settings)
        events = [e for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id)) if e.action == "settings.update"]
    assert options.gold_rate == pytest.approx(0.1) and options.max_overlap == 4
    assert (options.strategy, options.batch_size, options.cold_start) == ("margin", 8, 10)
    assert (settings.strategy, settings.batch_size, settings.cold_start) != ("margin", 8, 10)
    assert {"strategy", "batch_size", "cold_start"} <= set(events[-1].detail["changes"])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, 1e10])
def test_settings_page_keeps_the_retrain_interval_within_what_the_watcher_can_use(app_db, people, value):
    """The input stops where CampaignOptions.validate does (0.1 minute to a year): 1e10 minutes was saved, and
    once a run had finished, the watcher's next time trigger overflowed the date ("date value out of range") at
    every poll. (NaN and 0 the input refused already.)"""
    at = _open(people[1], "settings.py")
    at.number_input(key="opt_retrain_minutes").set_value(value)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert at.number_input(key="opt_retrain_minutes").value == 30.0
    with app_db.read() as s:
        assert s.get(AppSetting, "retrain_every_minutes") is None


def test_audit_page_lists_events(app_db, people):
    _seed(app_db, people)
    at = _open(people[1], "audit.py")
    table = _frame_with(at, "action")
    # newest first: the seeded import comes after the two system user.create events
    assert table["action"].tolist() == ["import", "user.create", "user.create"]
    assert table["admin"].tolist() == ["boss", "(system)", "(system)"]
    assert '"pairs.jsonl"' in table["detail"][0]
    at.selectbox(key="audit_action").set_value("user.create").run()
    assert _frame_with(at, "action")["action"].tolist() == ["user.create", "user.create"]


@pytest.mark.parametrize("page", CONSOLE_PAGES)
def test_annotators_cannot_reach_console_pages(app_db, people, page):
    annotator = people[0]
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["actor"] = annotator
    at.run()
    with pytest.raises(ValueError, match="Known pages"):
        at.switch_page(str(PAGES / page))
    # and the page file itself, run without the router, refuses before showing anything
    direct = AppTest.from_file(str(PAGES / page), default_timeout=TIMEOUT)
    direct.session_state["actor"] = annotator
    direct.run()
    assert not direct.exception, direct.exception
    assert [e.value for e in direct.error] == ["this action needs the admin role"]
    assert not direct.metric and not direct.dataframe and not direct.title


def _open_tab(at: AppTest) -> str:
    """The label of the tab the page tells the browser to show (``st.tabs``' ``default_tab_index``)."""
    [container] = at.get("tab_container")
    labels = [tab.label for tab in container.children.values()]
    return labels[container.proto.tab_container.default_tab_index]


def test_users_page_keeps_the_manage_tab_and_the_user_after_each_action(app_db, people):
    """Each action reruns the page; it used to come back on "Add a user", with the admin's place lost."""
    from annotate import accounts
    from tests.factories import make_user

    with app_db.begin() as s:
        make_user(s, "zoe")  # last in the list: not the selectbox's first option
    at = _open(people[1], "admin_users.py")
    assert _open_tab(at) == "Add a user"
    at.session_state["users_tab"] = "Manage a user"  # what clicking the tab sends
    at.selectbox(key="manage_user").set_value("zoe").run()
    assert _open_tab(at) == "Manage a user"

    def press(label: str) -> None:
        next(b for b in at.button if b.label == label).click().run()
        assert not at.exception and not at.error, at.error
        assert _open_tab(at) == "Manage a user"
        assert at.selectbox(key="manage_user").value == "zoe"

    press("Deactivate zoe")
    assert [s.value for s in at.success] == ["Deactivated zoe."]
    at.selectbox(key="role_zoe").set_value("admin").run()
    press("Change role")
    assert [s.value for s in at.success] == ["zoe is now admin."]
    _type_new_password(at, "a-new-password")
    press("Reset password")
    assert [s.value for s in at.success] == ["Password of zoe reset (and any lockout lifted)."]
    with app_db.read() as s:
        zoe = next(u for u in accounts.list_users(s, actor=people[1]) if u.username == "zoe")
        assert (zoe.active, zoe.role.value) == (False, "admin")


def _next_to_save(at: AppTest) -> list[str]:
    """The messages shown in the element right above the form's Save settings button."""
    [form] = at.get("form")
    children = list(form.children.values())
    [save] = [i for i, node in enumerate(children) if getattr(node, "label", None) == "Save settings"]
    above = children[save - 1]
    if not hasattr(above, "children"):  # a widget, not the messages' container
        return []
    return [alert.value for kind in ("error", "info", "success") for alert in above.get(kind)]


def test_settings_page_says_what_became_of_a_save_next_to_the_button_and_keeps_the_input(app_db, people):
    """The form is taller than a screen: a message at the top of the page or after the form was out of sight."""
    at = _open(people[1], "settings.py")
    at.number_input(key="opt_overlap").set_value(5)
    at.number_input(key="opt_max_overlap").set_value(4)
    at.number_input(key="opt_target").set_value(500)
    at.text_area(key="opt_guidelines").input("# Our rules")
    at.button(key="FormSubmitter:campaign_settings-Save settings").click().run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == ["overlap must be at least 1 and at most the maximum overlap"]
    assert _next_to_save(at) == [e.value for e in at.error]
    typed = {"opt_overlap": 5, "opt_max_overlap": 4, "opt_target": 500}
    assert {key: at.number_input(key=key).value for key in typed} == typed
    assert at.text_area(key="opt_guidelines").value == "# Our rules"

    at.number_input(key="opt_overlap").set_value(2)
    at.button(key="FormSubmitter:campaign_settings-Save settings").click().run()
    assert not at.exception and not at.error, at.error
    saved = "Saved: guidelines, max_overlap, overlap, target_judgments."
    assert [s.value for s in at.success] == [saved] and _next_to_save(at) == [saved]
    # Pressed again with the values just saved (what the second click of a double click sends): the save
    # is confirmed, not "Nothing changed." (test_admin_double_clicks); a press that saved nothing says so.
    at.button(key="FormSubmitter:campaign_settings-Save settings").click().run()
    assert [s.value for s in at.success] == [saved] == _next_to_save(at) and not at.info
    at = _open(people[1], "settings.py")
    at.button(key="FormSubmitter:campaign_settings-Save settings").click().run()
    assert [i.value for i in at.info] == ["Nothing changed."] == _next_to_save(at)


def _submit(at: AppTest, form: str, label: str) -> AppTest:
    at.button(key=f"FormSubmitter:{form}-{label}").click().run()
    assert not at.exception, at.exception
    return at


def _in_tab(at: AppTest, label: str, kind: str) -> list[str]:
    [tab] = [t for t in at.tabs if t.label == label]
    return [alert.value for alert in tab.get(kind)]


def test_users_page_keeps_a_refused_new_user_and_clears_an_added_one(app_db, people):
    """The add form used to clear on every submit: a too-short password cost the admin the username and role too."""
    from annotate import accounts

    at = _open(people[1], "admin_users.py")
    at.text_input(key="new_username").input("newbie")
    def password():
        return next(t for t in at.text_input if t.label.startswith("Password"))

    password().input("short")
    at.selectbox(key="new_role").set_value("admin")
    _submit(at, "add_user", "Add user")
    assert _in_tab(at, "Add a user", "error") == ["passwords need at least 8 characters"]
    password().input("long-enough")  # only the password needs typing again
    _submit(at, "add_user", "Add user")
    assert not at.error, [e.value for e in at.error]
    with app_db.read() as s:
        assert {u.username: u.role.value for u in accounts.list_users(s, actor=people[1])}["newbie"] == "admin"
    # said where the admin is looking, and the form is empty for the next account
    assert _in_tab(at, "Add a user", "success") == ["Added newbie (admin)."]
    assert (at.text_input(key="new_username").value, password().value, at.selectbox(key="new_role").value) == (
        "", "", "annotator")


def test_users_page_says_what_an_action_did_in_the_manage_tab(app_db, people):
    at = _open(people[1], "admin_users.py")
    at.session_state["users_tab"] = "Manage a user"
    at.run()
    at.selectbox(key="manage_user").set_value("ann").run()
    _type_new_password(at, "short")
    _submit(at, "reset_password", "Reset password")
    assert _in_tab(at, "Manage a user", "error") == ["passwords need at least 8 characters"]
    _type_new_password(at, "long-enough")
    _submit(at, "reset_password", "Reset password")
    assert _in_tab(at, "Manage a user", "success") == ["Password of ann reset (and any lockout lifted)."]
    assert [at.text_input(key=k).value for k in ("reset_password_text", "reset_password_repeat")] == ["", ""]


def _type_new_password(at: AppTest, password: str, repeat: str | None = None) -> None:
    at.text_input(key="reset_password_text").input(password)
    at.text_input(key="reset_password_repeat").input(password if repeat is None else repeat)


def _manage(at: AppTest, username: str) -> AppTest:
    at.session_state["users_tab"] = "Manage a user"
    at.run()
    at.selectbox(key="manage_user").set_value(username).run()
    return at


def _password_is(app_db, username: str, password: str) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import VerificationError
    from annotate.models import User

    with app_db.read() as s:
        stored = s.scalar(select(User.password_hash).where(User.username == username))
    try:
        return PasswordHasher().verify(stored, password)
    except VerificationError:
        return False


def test_users_page_asks_for_the_new_password_twice_and_changes_nothing_when_they_differ(app_db, people):
    """The admin typed the new password once (the CLI asks twice): a typo in it was a password nobody knew."""
    from tests.factories import PASSWORD

    at = _manage(_open(people[1], "admin_users.py"), "ann")
    _type_new_password(at, "a-new-password", "a-new-pasword")
    _submit(at, "reset_password", "Reset password")
    assert _in_tab(at, "Manage a user", "error") == [
        "The two passwords differ: nothing was changed. Type the new password twice."]
    assert not at.success and _password_is(app_db, "ann", PASSWORD)
    with app_db.read() as s:
        assert not s.scalars(select(AuditEvent).where(AuditEvent.action == "user.reset_password")).all()
    at.text_input(key="reset_password_repeat").input("a-new-password")
    _submit(at, "reset_password", "Reset password")
    assert _in_tab(at, "Manage a user", "success") == ["Password of ann reset (and any lockout lifted)."]
    assert _password_is(app_db, "ann", "a-new-password")


def test_users_page_says_what_a_reset_does_to_the_users_sessions(app_db, people):
    at = _manage(_open(people[1], "admin_users.py"), "ann")
    assert "ann is logged out at their next click and logs in with the new password." in [c.value for c in at.caption]
    at.selectbox(key="manage_user").set_value("boss").run()
    assert ("Your own account: you stay logged in here, and your other sessions are logged out."
            in [c.value for c in at.caption])


def test_an_admin_resetting_their_own_password_stays_logged_in_and_their_other_sessions_do_not(app_db, people):
    """The reset ended every login of the account, this one too: the admin who pressed it found the login
    page at the next click. Now this session takes the new password's fingerprint; the others still end."""
    elsewhere = _open(people[1], "overview.py")  # the same admin in another browser
    at = _manage(_open(people[1], "admin_users.py"), "boss")
    _type_new_password(at, "boss-new-password")
    _submit(at, "reset_password", "Reset password")
    assert _in_tab(at, "Manage a user", "success") == [
        "Your password was reset. You are still logged in here; your other sessions were logged out."]
    assert _password_is(app_db, "boss", "boss-new-password")
    at.run()  # the next click
    assert [t.value for t in at.title] == ["Users"] and not at.error
    elsewhere.run()
    assert [t.value for t in elsewhere.title] == ["prefloop"]
    assert [i.value for i in elsewhere.info] == [
        "You were logged out because this account's password was changed: log in again."]


def test_users_page_acts_on_nobody_until_a_user_is_chosen_and_asks_before_deactivating(app_db, people):
    """The first user in the list used to be preselected: opening "Manage a user" and pressing
    Deactivate deactivated whoever sorted first, in one click and without a word of warning."""
    at = _open(people[1], "admin_users.py")
    at.session_state["users_tab"] = "Manage a user"
    at.run()
    assert at.selectbox(key="manage_user").value is None
    assert not [b.key for b in at.button if b.key in ("deactivate", "activate", "change_role")]
    assert "New password" not in [t.label for t in at.text_input]

    at.selectbox(key="manage_user").set_value("ann").run()
    # Deactivate is a confirmation inside a popover that says what it does, not a button on the page.
    [popover] = [p for p in at.get("popover") if p.proto.popover.label == "Deactivate…"]
    [confirm] = [b for b in popover.get("button") if b.key == "deactivate"]
    assert confirm.label == "Deactivate ann"
    assert "logged out" in popover.get("markdown")[0].value
    confirm.click().run()
    assert _in_tab(at, "Manage a user", "success") == ["Deactivated ann."]


def test_overview_says_which_judgments_each_count_holds(app_db, people):
    """After importing a file with known winners the overview read "Judgments 66,714" beside
    "Judgments (last 24 hours) 0", with nothing to tell that one counts imports and the other does not."""
    from annotate.models import JudgmentSource

    _seed(app_db, people)
    with app_db.begin() as s:
        for cid in make_comparisons(s, 5, start=200):
            s.add(Judgment(comparison_id=cid, choice="a", source=JudgmentSource.imported))
    at = _open(people[1], "overview.py")
    m = _metrics(at)
    assert (m["Judgments"], m["Judgments (last 24 hours)"]) == ("65", "60")
    helps = {e.label: e.help for e in at.metric}
    assert "60 by annotators, 5 imported from files' known winners and 0 self-consistency probes" in helps["Judgments"]
    assert "imported ones are left out" in helps["Judgments (last 24 hours)"]
    # Said where it is seen, not only on hover: "Judgments 180" beside "Judgments (last 24 hours) 0" after an import.
    assert ("**Judgments** includes 5 imported judgments (files' known winners); **Judgments (last 24 hours)** and "
            "the hourly chart count annotators' own only.") in [c.value for c in at.caption]


def test_overview_says_nothing_of_imports_without_any(app_db, people):
    _seed(app_db, people)
    at = _open(people[1], "overview.py")
    assert not [c.value for c in at.caption if "imported" in c.value]


def test_overview_says_a_retrain_waits_for_a_new_judgment_only_while_none_arrived(app_db, people):
    """"Next retrain: not before … (2 new judgments) …; on time only once a new judgment arrived", with two
    arrived: the last clause is for when none has."""
    from annotate.models import TrainingRun

    annotator, admin = people
    with app_db.begin() as s:
        cids = make_comparisons(s, 2)
        s.add(TrainingRun(status="succeeded", started_at=utcnow() - timedelta(minutes=2),
                          finished_at=utcnow() - timedelta(minutes=1), counts={"max_judgment_id": 0}))
    at = _open(admin, "overview.py")
    [caption] = [c.value for c in at.caption if c.value.startswith("Next retrain")]
    assert "(0 new judgments)" in caption and caption.endswith("; on time only once a new judgment arrives."), caption

    with app_db.begin() as s:
        for cid in cids:
            s.add(Judgment(comparison_id=cid, annotator_id=annotator.id, choice="a", a_on_left=True))
    at.button(key="overview_refresh").click().run(timeout=TIMEOUT)  # the figures are kept for 30 s
    [caption] = [c.value for c in at.caption if c.value.startswith("Next retrain")]
    assert "not before" in caption and "(2 new judgments)" in caption, caption
    assert caption.endswith("if `prefloop retrain --watch` runs."), caption


def test_model_health_axes_show_three_decimals(app_db, people):
    """Two versions with the same accuracy and a spread of ~1e-15 drew ticks "1.000000" and
    "0.0000000000000…" (cut off): the accuracy and spread axes say how to write their numbers."""
    import json

    with app_db.begin() as s:
        for n_train in (200, 300):
            s.add(ModelVersion(artifact_path=f"/m{n_train}", encoder_id="enc", is_active=n_train == 300,
                               promoted=True, n_train=n_train, n_test=80,
                               metrics={"accuracy": 1.0, "ensemble_prob_std": 1.9e-15}))
    at = _open(people[1], "model_health.py")
    charts = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    axes = {chart["encoding"]["y"]["title"]: chart["encoding"]["y"].get("axis", {}).get("format")
            for chart in charts if "y" in chart.get("encoding", {})}
    assert axes["held-out accuracy"] == ".3f" and axes["mean std of P(A) across heads"] == ".3f", axes


def test_a_new_campaign_says_what_to_do_first_and_claims_no_model_check(app_db, people):
    """On an empty database the overview was a wall of zeros with no next step, and model health
    said "None: the model does not confidently contradict any human majority" with no model at all."""
    at = _open(people[1], "overview.py")
    assert any("import prompts and responses on the Import page" in i.value for i in at.info)
    # "ann" is an active annotator: no "add annotators" (it said so with annotators there)
    assert not any("add annotators" in i.value for i in at.info), [i.value for i in at.info]
    with app_db.begin() as s:
        s.execute(update(User).where(User.username == "ann").values(active=False))
    at.button(key="overview_refresh").click().run()
    assert any(i.value.endswith("then add annotators on the Users page.") for i in at.info), [i.value for i in at.info]
    with app_db.begin() as s:
        s.execute(update(User).where(User.username == "ann").values(active=True))
    at = _open(people[1], "model_health.py")
    assert not any("does not confidently contradict" in s.value for s in at.success)
    assert any("No model yet" in i.value for i in at.info)
    _seed(app_db, people)  # with comparisons and a model, neither note
    at = _open(people[1], "overview.py")
    at.button(key="overview_refresh").click().run()  # the figures are kept for 30 s
    assert not any("Import page" in i.value for i in at.info)
    at = _open(people[1], "model_health.py")
    at.button(key="health_refresh").click().run()  # kept for a minute
    assert not any("No model yet" in i.value for i in at.info)


def test_every_campaign_setting_says_what_it_means(app_db, people):
    """Batch size 32, cold start 64, strategy "default": of what, and doing what? Only the first row had help."""
    at = _open(people[1], "settings.py")
    inputs = [*at.number_input, *at.selectbox]
    assert len(inputs) == 10
    assert [w.label for w in inputs if not w.help] == []


def test_the_admin_menu_starts_with_the_page_an_admin_lands_on():
    """The admin lands on the overview, which was fifth in the menu, below Import, Export, Users and Reward model."""
    from annotate.ui import nav

    assert [spec.title for spec in nav.ADMIN_PAGES][:3] == ["Overview", "Import", "Users"]
    assert nav.ADMIN_PAGES[0].file == nav.ADMIN_HOME


def test_review_marks_no_gold_answer_the_admin_did_not_choose(app_db, people):
    """The known answer was preselected as "a" (or as the answer given to the pair reviewed before):
    pressing Mark as gold made it the answer without a choice."""
    cids = _seed(app_db, people)
    at = _open(people[1], "review.py")
    at.number_input(key="review_id").set_value(cids[1]).run()
    answer = at.selectbox(key=f"gold_choice_{cids[1]}_-")
    assert answer.value is None
    at.button(key="FormSubmitter:gold_form-Mark as gold").click().run()
    assert [e.value for e in at.error] == ["Choose the known answer first."]
    with app_db.read() as s:
        assert not s.get(Comparison, cids[1]).is_gold
    at.selectbox(key=f"gold_choice_{cids[1]}_-").set_value("tie")
    at.button(key="FormSubmitter:gold_form-Mark as gold").click().run()
    assert not at.error
    with app_db.read() as s:
        assert s.get(Comparison, cids[1]).gold_choice.value == "tie"
    assert at.selectbox(key=f"gold_choice_{cids[1]}_tie").value == "tie"  # a gold pair shows its answer
    # Unmarked, the pair starts with no answer again: the box kept "tie", and a press of Mark as gold right
    # after Unmark gold (the second click of a double click, landing where Unmark gold was) marked it again.
    at.button(key="unmark_gold").click().run()
    assert at.selectbox(key=f"gold_choice_{cids[1]}_-").value is None
    at.button(key="FormSubmitter:gold_form-Mark as gold").click().run()
    assert [e.value for e in at.error] == ["Choose the known answer first."]
    with app_db.read() as s:
        assert not s.get(Comparison, cids[1]).is_gold
    at.number_input(key="review_id").set_value(cids[2]).run()  # the next pair starts with no answer
    assert at.selectbox(key=f"gold_choice_{cids[2]}_-").value is None


def _tab_blocks(at: AppTest, label: str) -> list[str]:
    """The kinds of the tab's top-level elements in page order (a form, the columns, an alert)."""
    [tab] = [t for t in at.tabs if t.label == label]
    return [getattr(child, "type", None) or type(child).__name__ for _, child in sorted(tab.children.items())]


def test_users_page_confirms_below_the_controls_so_a_second_click_finds_them_where_they_were(app_db, people):
    """A confirmation above a tab's controls pushed them down: the second click of a double click on Add user
    landed on the Role box over it and opened its list (test_admin_double_clicks)."""
    at = _open(people[1], "admin_users.py")
    at.text_input(key="new_username").input("newbie")
    next(t for t in at.text_input if t.label.startswith("Password")).input("long-enough")
    _submit(at, "add_user", "Add user")
    assert _in_tab(at, "Add a user", "success") == ["Added newbie (annotator)."]
    assert _tab_blocks(at, "Add a user") == ["form", "success"]
    at = _manage(at, "ann")
    _type_new_password(at, "long-enough")
    _submit(at, "reset_password", "Reset password")
    assert _in_tab(at, "Manage a user", "success") == ["Password of ann reset (and any lockout lifted)."]
    assert _tab_blocks(at, "Manage a user") == ["selectbox", "flex_container", "success"]  # user, columns


def test_review_retires_and_reopens_a_pair(app_db, people):
    """Retire… asks in a popover, then says what it did; the page shows the pair retired, with Reopen."""
    cids = _seed(app_db, people)
    at = _open(people[1], "review.py")
    at.number_input(key="review_id").set_value(cids[3]).run()
    assert "reopen" not in [b.key for b in at.button]
    at.button(key="retire").click().run()
    assert not at.exception and not at.error
    assert [s.value for s in at.success] == [f"Comparison {cids[3]} is retired."]
    assert [m.value for m in at.metric if m.label == "Status"] == ["retired"]
    assert any("nobody is served this pair" in i.value for i in at.info)
    assert "retire" not in [b.key for b in at.button]
    with app_db.read() as s:
        assert s.get(Comparison, cids[3]).status is ComparisonStatus.retired
    at.button(key="reopen").click().run()
    assert [s.value for s in at.success] == [f"Comparison {cids[3]} is back in the campaign."]
    assert [m.value for m in at.metric if m.label == "Status"] == ["complete"]
    assert "reopen" not in [b.key for b in at.button]
    with app_db.read() as s:
        assert s.get(Comparison, cids[3]).status is ComparisonStatus.complete


def test_model_health_claims_no_disagreement_check_when_no_judged_pair_was_scored(app_db, people):
    """Imported winners are never scored (a retrain scores open pairs): the page said "None: the model does
    not confidently contradict any human majority" having compared nothing (researcher dogfood run)."""
    cids = _seed(app_db, people)
    with app_db.begin() as s:
        s.execute(update(Comparison).values(model_p_a=None))
    at = _open(people[1], "model_health.py")
    assert not at.exception
    assert not any("does not confidently contradict" in s.value for s in at.success)
    assert any("No judged pair has a model P(A) yet" in i.value for i in at.info), [i.value for i in at.info]
    # One judged pair scored (both humans chose A) and not contradicted: checked, and it says on how many.
    with app_db.begin() as s:
        s.execute(update(Comparison).where(Comparison.id == cids[3]).values(model_p_a=0.95))
    at.button(key="health_refresh").click().run()
    assert [s.value for s in at.success] == [
        "None: on the 1 judged pair with a model P(A), the model does not confidently contradict the human "
        "majority."]
    assert not any("No judged pair has a model P(A) yet" in i.value for i in at.info)


def test_overview_says_how_many_pairs_are_retired_and_its_median_leaves_probes_out(app_db, people):
    """Quality audit: Open + Complete fell short of Comparisons with retired pairs, without a word, and the median
    time counted probes where the Annotators page does not."""
    cids = _seed(app_db, people)
    annotator = people[0]
    with app_db.begin() as s:
        s.get(Comparison, cids[0]).status = ComparisonStatus.retired
        for _ in range(3):  # slow probes: counted, they would move the median
            s.add(Judgment(comparison_id=cids[1], annotator_id=annotator.id, choice="a", a_on_left=True,
                           time_spent_ms=900_000, is_probe=True, created_at=utcnow() - timedelta(minutes=5)))
    at = _open(people[1], "overview.py")
    m = _metrics(at)
    assert m["Open"] == "4" and m["Complete"] == "29" and m["Comparisons"] == "34"
    assert any(c.value.startswith("1 comparison retired on the Review page") for c in at.caption), \
        [c.value for c in at.caption]
    assert m["Median time per judgment"] == "15.2 s"
