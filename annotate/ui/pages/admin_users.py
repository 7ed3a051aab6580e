"""Admin: accounts (list, add, activate/deactivate, change role, reset password)."""

import streamlit as st

from annotate import accounts
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


def _run(action, success: str, flash_key: str = "users_flash") -> None:
    context.run_action(action, success, flash_key=flash_key)


def _say(messages: list[str]) -> None:
    for message in messages:
        st.success(message, icon=":material/check:")


with db.read() as session:
    users = [{"username": u.username, "role": u.role.value, "active": u.active,
              "locked_until": u.locked_until, "created_at": u.created_at}
             for u in accounts.list_users(session, actor=actor)]
st.dataframe(users, hide_index=True)
names = [u["username"] for u in users]

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
        st.caption("Choose a user to deactivate or activate, change their role or reset their password.")
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
            new_role = st.selectbox("Role", ROLES, index=ROLES.index(row["role"]), key=f"role_{target}")
            if st.button("Change role", key="change_role", disabled=new_role == row["role"]):
                _run(lambda s: accounts.set_role(s, target, new_role, actor=actor), f"{target} is now {new_role}.")
        with c2, st.form("reset_password"):
            new_password = st.text_input("New password", type="password", key="reset_password_text")
            if st.form_submit_button("Reset password"):
                _run(lambda s: accounts.reset_password(s, target, new_password, actor=actor),
                     f"Password of {target} reset (and any lockout lifted).")
