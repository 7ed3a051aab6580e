"""Log in with a local account."""

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from annotate import accounts
from annotate.errors import AuthError, PrefloopError
from annotate.settings import operator_command
from annotate.ui import context

_, middle, _ = st.columns([1, 1.2, 1])
middle.title("prefloop")
middle.caption("Log in to start annotating.")
if reason := st.session_state.pop(context.LOGGED_OUT_KEY, None):
    middle.info(reason)
try:
    with context.get_db().read() as session:
        no_admin = not accounts.has_active_admin(session)
except (SQLAlchemyError, PrefloopError):  # an unusable database: logging in says so
    no_admin = False
if no_admin:
    # With this server's PREFLOOP_DATA_DIR / PREFLOOP_DATABASE_URL: without them the admin went to the default database.
    add = operator_command(context.get_settings(), ".venv/bin/prefloop users add NAME --role admin")
    middle.info(f"This server has no admin account yet. Create one where it runs: `{add.line}` (it asks for the "
                f"password{'; ' + add.note if add.note else ''}), then log in here.", icon=":material/person_add:")

with middle.form("login", clear_on_submit=False, enter_to_submit=True):
    username = st.text_input("Username", key="login_username", autocomplete="username")
    password = st.text_input("Password", type="password", autocomplete="current-password")
    submitted = st.form_submit_button("Log in", type="primary")

if submitted:
    settings = context.get_settings()
    # Wrong credentials, throttling and an unusable database all end here with their message; for
    # the credentials the form above is the retry, so no Try again button under the message.
    with middle, context.stop_on_errors():
        try:
            actor = accounts.login(context.get_db(), username, password,
                                   max_failures=settings.login_max_failures,
                                   lockout_seconds=settings.login_lockout_seconds)
        except AuthError as exc:
            st.error(str(exc))
            st.stop()
    context.log_in(actor)
    st.rerun()
