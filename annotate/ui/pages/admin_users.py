"""Admin: accounts (list, add, activate/deactivate, rename, change role, reset password)."""

import streamlit as st
from sqlalchemy.exc import OperationalError

from annotate import accounts
from annotate.errors import PrefloopError
from annotate.models import Role
from annotate.ui import context
from annotate.ui.render import safe_markdown

ROLES = [role.value for role in Role]

actor = context.require_admin_page()
db = context.get_db()

st.title("Users")
# The forms keep what was typed when an action is refused, and are emptied here, before their widgets
# exist, once it succeeded. The success is said in the tab it came from, where the admin is looking.
added, managed = st.session_state.pop("users_added", []), st.session_state.pop("users_flash", [])
if added:
    for key in ("new_username", "new_password", "new_role"):
        st.session_state.pop(key, None)
if managed:
    st.session_state.pop("reset_password_text", None)
    st.session_state.pop("reset_password_repeat", None)


def _run(action, success: str, flash_key: str = "users_flash") -> None:
    context.run_action(action, success, flash_key=flash_key)


def _reset_password(username: str, password: str) -> None:
    """``run_action`` for a reset that keeps this browser session logged in when it is the admin's own.

    A reset ends every login of the account (the session's fingerprint of the password hash no longer
    matches), and this session was logged out at its next click, mid-page and unwarned. Like Django's
    ``update_session_auth_hash``, the session that made the change takes the new fingerprint, after the
    commit: it was checked as this admin's in the reset's own transaction; every other session of the
    account (a forgotten browser, a stolen cookie) is still logged out.
    """
    try:
        fresh = db.transact(lambda s: accounts.actor_of(accounts.reset_password(s, username, password, actor=actor)))
    except (PrefloopError, OperationalError) as exc:
        st.error(context.not_saved_message(exc))
        return
    if fresh.id == actor.id:
        context.log_in(fresh)
        done = "Your password was reset. You are still logged in here; your other sessions were logged out."
    else:
        done = f"Password of {username} reset (and any lockout lifted)."
    st.session_state["users_flash"] = [done]
    st.rerun()


def _rename(old: str, new: str) -> None:
    """``run_action`` for ``accounts.rename_user``, remembering the rename for the next runs (see below)."""
    # Remembered before the commit: a click that arrives meanwhile (the second of a double click) stops this
    # run at its next use of st.session_state, and a write after the commit was lost with the run, while the
    # rename was not. Forgotten if the rename is refused.
    st.session_state["users_renamed"] = (old, new.strip())
    try:
        renamed = db.transact(lambda s: accounts.rename_user(s, old, new, actor=actor).username)
    except (PrefloopError, OperationalError) as exc:
        st.session_state.pop("users_renamed", None)
        st.error(context.not_saved_message(exc))
        return
    st.session_state["users_flash"] = [_renamed_message(old, renamed)]
    st.rerun()


def _renamed_message(old: str, new: str) -> str:
    return (f"Renamed {old} to {new}. They log in as {new} from now on; "
            "their judgments stay theirs and their open sessions stay logged in.")


def _say(messages: list[str]) -> None:
    for message in messages:
        st.success(message, icon=":material/check:")


with db.read() as session:
    users = [{"username": u.username, "role": u.role.value, "active": u.active,
              "locked_until": u.locked_until, "created_at": u.created_at}
             for u in accounts.list_users(session, actor=actor)]
st.dataframe(users, hide_index=True)
names = [u["username"] for u in users]
# After a rename the user box still holds the old name, and so does a second press of Rename sent before
# the page came back (a double click): both show the account under its new name, with the confirmation, and
# the press, which was on the old name's form (keyed by it), renames nothing and says nothing confusing.
renamed = st.session_state.get("users_renamed")
if (renamed and renamed[0] not in names and renamed[1] in names
        and st.session_state.get("manage_user") == renamed[0]):
    st.session_state["manage_user"] = renamed[1]
    managed = managed or [_renamed_message(*renamed)]

# A stateful tab bar (key, on_change): the rerun after each action opens the tab the admin was on,
# where a stateless one reopens the first.
add, manage = st.tabs(["Add a user", "Manage a user"], key="users_tab", on_change="rerun")
with add:
    _say(added)
    with st.form("add_user"):
        username = st.text_input("Username", key="new_username")
        password = st.text_input(f"Password (at least {accounts.MIN_PASSWORD_LENGTH} characters)",
                                 type="password", key="new_password")
        role = st.selectbox("Role", ROLES, index=ROLES.index(Role.annotator.value), key="new_role")
        if st.form_submit_button("Add user", type="primary"):
            _run(lambda s: accounts.create_user(s, username, password, role, actor=actor),
                 f"Added {username.strip()} ({role}).", flash_key="users_added")

with manage:
    _say(managed)
    # No user is chosen for the admin: with the first one preselected, Deactivate acted on whoever
    # sorted first, one click after opening the tab.
    target = st.selectbox("User", names, index=None, placeholder="Choose a user", key="manage_user")
    row = next((u for u in users if u["username"] == target), None)
    if row is None:
        st.caption("Choose a user to deactivate or activate, rename, change their role or reset their password.")
    else:
        c1, c2 = st.columns(2)
        with c1:
            if row["active"]:
                # Asked first: it logs the user out at their next click, mid-pair if they are annotating.
                with st.popover("Deactivate…", icon=":material/block:"):
                    st.markdown(f"Deactivate **{safe_markdown(target)}**? They are logged out at their next click and cannot "
                                "log in until an admin activates the account again; their judgments are kept.")
                    if st.button(f"Deactivate {target}", key="deactivate", type="primary"):
                        _run(lambda s: accounts.set_active(s, target, False, actor=actor), f"Deactivated {target}.")
            elif st.button("Activate", key="activate", icon=":material/check_circle:"):
                _run(lambda s: accounts.set_active(s, target, True, actor=actor), f"Activated {target}.")
            # The form is keyed by the name: the second press of a double click, sent before the page came
            # back, is a press on the old name's form, which no longer exists (see the top of the page).
            with st.popover("Rename…", icon=":material/edit:", key=f"rename_{target}"), \
                    st.form(f"rename_form_{target}", border=False):
                new_name = st.text_input("New username", key=f"rename_to_{target}")
                st.caption(f"{safe_markdown(target)} keeps their judgments and stays logged in; "
                           "they log in with the new name from then on.")
                if st.form_submit_button(f"Rename {target}", type="primary"):
                    _rename(target, new_name)
            new_role = st.selectbox("Role", ROLES, index=ROLES.index(row["role"]), key=f"role_{target}")
            if st.button("Change role", key="change_role", disabled=new_role == row["role"]):
                _run(lambda s: accounts.set_role(s, target, new_role, actor=actor), f"{target} is now {new_role}.")
        with c2, st.form("reset_password"):
            new_password = st.text_input("New password", type="password", key="reset_password_text")
            # Typed twice, as the CLI asks: a typo typed once is a password nobody knows.
            repeat = st.text_input("Repeat the new password", type="password", key="reset_password_repeat")
            st.caption("Your own account: you stay logged in here, and your other sessions are logged out."
                       if target == actor.username else
                       f"{safe_markdown(target)} is logged out at their next click and logs in with the new password.")
            if st.form_submit_button("Reset password"):
                if repeat != new_password:
                    st.error("The two passwords differ: nothing was changed. Type the new password twice.")
                else:
                    _reset_password(target, new_password)
