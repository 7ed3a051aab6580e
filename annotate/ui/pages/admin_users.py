"""Admin: accounts (list, add, activate/deactivate, rename, change role, reset password)."""

import hashlib
import hmac
import secrets

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
if managed or st.session_state.pop("users_reset_clear", False):
    st.session_state.pop("reset_password_text", None)
    st.session_state.pop("reset_password_repeat", None)


def _digest(key: bytes, *values: str) -> str:
    """What a press carried, to tell the second press of a double click (the same values) without keeping
    the password."""
    return hmac.new(key, "\0".join(values).encode(), hashlib.sha256).hexdigest()


def _state(user) -> tuple:
    return bool(user.active), Role(user.role).value, accounts.credential_of(user)


def _manage_action(target: str, change, success: str, *, password: str = "") -> None:
    """Run ``change(session)`` (it returns the ``target``'s row) in one unit of work, noting what it did.

    The note, written before the commit, is (target, the row's state after the change, message, ...): a click
    that arrives meanwhile (the second of a double click) stops this run at its next use of st.session_state,
    and a confirmation written after the commit was lost with the run while the change was not. The manage
    tab shows the message while the target is chosen and still in that state (a refused or overtaken change
    confirms nothing), so also after the second click landed on whatever replaced the button.
    """
    key = secrets.token_bytes(16)

    def work(session):
        user = change(session)
        st.session_state.pop("users_renamed", None)  # its confirmation gives way to this one
        st.session_state["users_done"] = {"user": target, "state": _state(user), "message": success, "key": key,
                                          "reset": _digest(key, target, password) if password else None,
                                          "replayed": False}
        if user.id == actor.id and password:
            # A reset ends every login of the account (the session's fingerprint of the password hash no
            # longer matches); like Django's update_session_auth_hash, the session that made it takes the new
            # fingerprint. Before the commit, as the note: taken after it, a second click logged the admin out.
            context.log_in(accounts.actor_of(user))
        return user

    try:
        db.transact(work)
    except (PrefloopError, OperationalError) as exc:
        if target == actor.username:
            context.log_in(actor)  # the fingerprint of the password that is still the account's
        st.error(context.not_saved_message(exc))
        return
    if password:
        st.session_state["users_reset_clear"] = True
    st.rerun()


def _reset_password(username: str, password: str) -> None:
    """Reset ``username``'s password; this browser session stays logged in when it is the admin's own.

    Every other session of the account (a forgotten browser, a stolen cookie) is logged out. The second
    press of a double click, carrying the same password for the same account whose password nobody changed
    since, resets nothing again (its run shows the first press's confirmation and empties the form), and a
    press on the emptied form right after it says nothing more.
    """
    done = st.session_state.get("users_done")
    if (done and done["reset"] and not done["replayed"] and done["user"] == username
            and _states.get(username) == done["state"]):
        if not password:
            done["replayed"] = True
            return  # the second click, landing on the emptied form: the confirmation above says it all
        if hmac.compare_digest(done["reset"], _digest(done["key"], username, password)):
            done["replayed"] = True
            st.session_state["users_reset_clear"] = True
            st.rerun()
    _manage_action(username, lambda s: accounts.reset_password(s, username, password, actor=actor),
                   "Your password was reset. You are still logged in here; your other sessions were logged out."
                   if username == actor.username else f"Password of {username} reset (and any lockout lifted).",
                   password=password)


def _add_user(username: str, password: str, role: str) -> None:
    """Create the account; the second press of a double click confirms the first one's instead.

    That press carries the same values, and said "user ... already exists" about the account its first press
    had just created (whose confirmation was lost, see ``_manage_action``). It is told by the note its first
    press wrote before the commit: the same name, password and role, and the account under that name is the
    one created then. Once only: a later press for that name is refused as taken, as is one for a name that
    another admin or an earlier add took. A press on the emptied form, the second click landing after the
    page came back, says nothing more than the confirmation.
    """
    made = st.session_state.get("users_created")
    if made and not made["replayed"] and _ids.get(made["user"]) == made["id"] and (
            (not username.strip() and not password)
            or hmac.compare_digest(made["press"], _digest(made["key"], username.strip(), password, role))):
        made["replayed"] = True
        st.session_state["users_added"] = [made["message"]]
        st.rerun()
    success, key = f"Added {username.strip()} ({role}).", secrets.token_bytes(16)

    def work(session):
        user = accounts.create_user(session, username, password, role, actor=actor)
        st.session_state["users_created"] = {"user": user.username, "id": user.id, "message": success, "key": key,
                                             "press": _digest(key, user.username, password, role),
                                             "replayed": False}

    context.run_action(work, success, flash_key="users_added")


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
    rows = accounts.list_users(session, actor=actor)
    users = [{"username": u.username, "role": u.role.value, "active": u.active,
              "locked_until": u.locked_until, "created_at": u.created_at} for u in rows]
    _states, _ids = {u.username: _state(u) for u in rows}, {u.username: u.id for u in rows}
st.dataframe(context.local_rows(users), hide_index=True)
context.times_caption()
names = [u["username"] for u in users]
# After a rename the user box still holds the old name, and so does a second press of Rename sent before
# the page came back (a double click): both show the account under its new name, with the confirmation, and
# the press, which was on the old name's form (keyed by it), renames nothing and says nothing confusing.
# The confirmation stays while the account is chosen under its new name, as the other actions' do: the second
# click can land after the page came back (on whatever replaced the button) and rerun it without the flash.
renamed = st.session_state.get("users_renamed")
if renamed and renamed[0] not in names and renamed[1] in names:
    if st.session_state.get("manage_user") == renamed[0]:
        st.session_state["manage_user"] = renamed[1]
    if st.session_state.get("manage_user") == renamed[1]:
        managed = managed or [_renamed_message(*renamed)]

# A stateful tab bar (key, on_change): the rerun after each action opens the tab the admin was on,
# where a stateless one reopens the first.
add, manage = st.tabs(["Add a user", "Manage a user"], key="users_tab", on_change="rerun")
# Each tab says what its action did below its controls, not above them: a confirmation above pushed them
# down, and the second click of a double click landed on the Role box over the button and opened its list.
with add:
    with st.form("add_user"):
        username = st.text_input("Username", key="new_username")
        password = st.text_input(f"Password (at least {accounts.MIN_PASSWORD_LENGTH} characters)",
                                 type="password", key="new_password")
        role = st.selectbox("Role", ROLES, index=ROLES.index(Role.annotator.value), key="new_role")
        if st.form_submit_button("Add user", type="primary"):
            _add_user(username, password, role)
    _say(added)

with manage:
    done = st.session_state.get("users_done")
    if (done and st.session_state.get("manage_user") == done["user"]
            and _states.get(done["user"]) == done["state"] and done["message"] not in managed):
        managed = [*managed, done["message"]]
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
                        _manage_action(target, lambda s: accounts.set_active(s, target, False, actor=actor),
                                       f"Deactivated {target}.")
            elif st.button("Activate", key="activate", icon=":material/check_circle:"):
                _manage_action(target, lambda s: accounts.set_active(s, target, True, actor=actor),
                               f"Activated {target}.")
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
                _manage_action(target, lambda s: accounts.set_role(s, target, new_role, actor=actor),
                               f"{target} is now {new_role}.")
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
    _say(managed)
