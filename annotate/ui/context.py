"""What every page needs: shared resources, the logged-in actor, guards, error display.

Shared resources come from ``st.cache_resource`` keyed by the values they are
built from (the ``PREFLOOP_*`` environment, the database URL), so one process
serving several configurations (tests do) never mixes them up. They are never
mutated. ``st.session_state`` holds only per-user UI state.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import streamlit as st
from sqlalchemy.exc import OperationalError, ProgrammingError
from streamlit.runtime.scriptrunner import get_script_run_ctx

from annotate import accounts, queue
from annotate.accounts import Actor
from annotate.db import Database, create_db_engine, is_transient
from annotate.errors import PermissionDenied, PrefloopError
from annotate.settings import Settings, load_settings, unknown_variables

ACTOR_KEY = "actor"
LAST_SEEN_KEY = "last_seen"  # time.time() of this browser session's last run while logged in
# [time.time()] of its last download press let through by deferred_download (a click that runs no script):
# activity too. A list, changed in place, because that press runs in another thread (see deferred_download).
PRESSED_KEY = "last_download_press"
LOGGED_OUT_KEY = "logged_out_because"
_log = logging.getLogger(__name__)
# Never "reload this page": a reload starts a new browser session, which is logged out. The page
# shows a Try again button instead (stop_on_errors), which runs it again in the same session.
DATABASE_DOWN = ("The database cannot be reached or is not set up: check PREFLOOP_DATABASE_URL, run "
                 "`prefloop db upgrade`, then press Try again.")
DATABASE_BUSY = "The database is busy with other writes. Nothing was lost: press Try again in a moment."
EXTRA_VOTE = ("Saved, as an extra judgment: others completed this pair while it sat here past its lease "
              "(PREFLOOP_LEASE_SECONDS). Your answer counts like theirs.")
"""The toast for a judgment of a pair whose overlap others filled meanwhile (``judgments.Submitted.extra``)."""
NOT_SAVED = "Not saved: the database is busy or cannot be reached. Press it again in a moment."


@st.cache_resource(show_spinner=False)
def _settings_for(environ: tuple[tuple[str, str], ...]) -> Settings:
    for line in unknown_variables(dict(environ)):  # once per distinct environment: in the server's log
        _log.warning("%s", line)
    return load_settings(dict(environ))


@st.cache_resource(show_spinner=False)
def _database_for(url: str) -> Database:
    return Database(create_db_engine(url))


def get_settings() -> Settings:
    """The process settings (cached per distinct ``PREFLOOP_*`` environment)."""
    environ = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("PREFLOOP_")))
    return _settings_for(environ)


def get_db() -> Database:
    """The shared :class:`Database` for the configured URL (one engine per URL and process)."""
    return _database_for(get_settings().sqlalchemy_url)


def current_actor() -> Actor | None:
    """The logged-in user of this browser session, if any."""
    return st.session_state.get(ACTOR_KEY)


def log_in(actor: Actor) -> None:
    """Remember ``actor`` as this browser session's user."""
    st.session_state[ACTOR_KEY] = actor
    st.session_state[LAST_SEEN_KEY] = time.time()


def give_back_pairs(actor: Actor) -> None:
    """Let go of the pairs ``actor`` holds, on Log out, so that others are served them now (they waited for
    the lease to lapse, 15 minutes by default). Best effort: with the database away, the leases lapse."""
    try:
        get_db().transact(lambda session: queue.give_back(session, actor=actor))
    except (PrefloopError, OperationalError, ProgrammingError):
        pass


def three_decimals(*columns: str) -> dict:
    """``column_config`` showing ``columns`` with three decimals (a float column dropped trailing zeros:
    0.63 beside 0.623)."""
    return {name: st.column_config.NumberColumn(format="%.3f") for name in columns}


def log_out() -> None:
    """Forget everything this browser session knew (the actor and all UI state)."""
    for key in list(st.session_state.keys()):
        del st.session_state[key]


def _idle_too_long(idle_minutes: int, last_seen: float | None, pressed: list[float] | None) -> bool:
    """Whether a session last seen at ``last_seen`` (``time.time()`` of its last run) or, if later, at its last
    download press (``PRESSED_KEY``) has been idle past the limit (0: never). None seen: not idle."""
    seen = [t for t in (last_seen, *(pressed or ())) if t is not None]
    return bool(idle_minutes) and bool(seen) and time.time() - max(seen) > idle_minutes * 60


def _idle_logged_out(idle_minutes: int) -> str:
    """What the login page says to a session logged out for being idle."""
    return f"You were logged out after {idle_minutes} minute{'' if idle_minutes == 1 else 's'} without activity."


def refresh_actor() -> Actor | None:
    """Re-read the logged-in user from the database: log out a deactivated or deleted
    account or one whose password was reset since this login, and pick up a role
    change, so the page list always follows the database. A session idle for more
    than ``PREFLOOP_SESSION_IDLE_MINUTES`` (since its last run or its last download press, see
    :func:`deferred_download`) is logged out first."""
    actor = current_actor()
    if actor is None:
        return None
    idle = get_settings().session_idle_minutes
    if _idle_too_long(idle, st.session_state.get(LAST_SEEN_KEY), st.session_state.get(PRESSED_KEY)):
        log_out()
        st.session_state[LOGGED_OUT_KEY] = _idle_logged_out(idle)
        return None
    st.session_state[LAST_SEEN_KEY] = time.time()
    try:
        with get_db().read() as session:
            user = accounts.require_active(session, actor)
            fresh = accounts.actor_of(user)
    except PermissionDenied as exc:
        log_out()
        # Said on the login page: someone whose password was reset elsewhere (another session, the
        # CLI), or anyone deactivated while working, would otherwise just find the login form in front of them.
        st.session_state[LOGGED_OUT_KEY] = f"You were logged out because {exc}."
        return None
    if fresh != actor:
        log_in(fresh)
    return fresh


def require_login() -> Actor:
    """The logged-in actor, or stop the page with a message."""
    actor = current_actor()
    if actor is None:
        st.error("Log in first.")
        st.stop()
    return actor


def require_admin_page() -> Actor:
    """Guard for admin pages: re-check the role against the database, else stop.

    Every admin page calls this itself (pages are files that could be reached
    without the router), on top of the router not registering them for
    annotators.
    """
    actor = current_actor()
    try:
        with get_db().read() as session:
            accounts.require_admin(session, actor)
    except PermissionDenied as exc:
        st.error(str(exc))
        st.stop()
    except (OperationalError, ProgrammingError) as exc:  # the database went away after the router's read
        st.error(error_message(exc))
        _try_again()
    return actor


@contextmanager
def user_errors() -> Iterator[None]:
    """Show errors a user can cause as ``st.error`` with their message, never a traceback."""
    try:
        yield
    except PrefloopError as exc:
        st.error(str(exc))


@contextmanager
def stop_on_errors() -> Iterator[None]:
    """Stop the page with a message, not a traceback, when what it needs cannot be had.

    A ``PrefloopError`` (a bad setting, a missing comparison, a role the user lost)
    shows its own message; a database still locked after the busy timeout shows
    ``DATABASE_BUSY``, any other unusable database ``DATABASE_DOWN``. Under the
    message a Try again button runs the page again in this browser session.
    """
    try:
        yield
    except PrefloopError as exc:
        st.error(str(exc))
        _try_again()
    except (OperationalError, ProgrammingError) as exc:
        st.error(error_message(exc))
        _try_again()


def _try_again() -> None:
    """Offer a rerun of the stopped page (pressing a button reruns it; a reload would log the user out)."""
    st.button("Try again", key="try_again", icon=":material/refresh:")
    st.stop()


def error_message(exc: BaseException) -> str:
    """What to tell the user about ``exc``: a ``PrefloopError``'s own text, ``DATABASE_BUSY`` for a
    database locked past the busy timeout or a PostgreSQL deadlock / serialization failure that
    outlasted ``Database.transact``'s retries, ``DATABASE_DOWN`` for any other database error."""
    if isinstance(exc, PrefloopError):
        return str(exc)
    # The driver's own message: SQLAlchemy's adds the statement, whose column names
    # (users.locked_until) would match too.
    busy = "database is locked" in str(getattr(exc, "orig", "")).lower() or is_transient(exc)
    return DATABASE_BUSY if busy else DATABASE_DOWN


def not_saved_message(exc: BaseException) -> str:
    """What to tell the user about a write that did not happen: a ``PrefloopError``'s own text, else
    ``NOT_SAVED`` (the unit of work rolled back and the form keeps its input: pressing again retries).
    Not ``error_message``'s "press Try again": that button exists only on a page that stopped."""
    return str(exc) if isinstance(exc, PrefloopError) else NOT_SAVED


def metric_row():
    """A row for ``st.metric``s that wraps onto more lines where the page is narrow.

    ``st.columns`` cut every label and value down to its column: at 800 px the overview's
    "100,023" prompts read "10…", and at 1280 px "Median time per judgment" lost its end."""
    return st.container(horizontal=True, gap="medium")


def zone(name: str | None) -> tzinfo:
    """The time zone an IANA name (the browser's, as it reports it) names; UTC for none or one unknown here."""
    if not name:
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: not a key (an absolute path, "..", ...)
        return timezone.utc


def browser_zone() -> tzinfo:
    """The browser's time zone (``st.context.timezone``), for "today" as the person at it counts days."""
    try:
        return zone(st.context.timezone)
    except Exception:  # no browser behind the run (a script, AppTest)
        return timezone.utc


def zone_label() -> str:
    """The browser's time zone as the admin pages name it: its IANA key ("Europe/Berlin"), or "UTC"."""
    return str(browser_zone())


def local_time(value: datetime | None) -> datetime | None:
    """A stored time (UTC; a naive one is read as UTC) as the wall clock of the browser's time zone,
    naive, for display: in text with :func:`zone_label` beside it, in tables under a caption that names it."""
    if value is None:
        return None
    aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return aware.astimezone(browser_zone()).replace(tzinfo=None)


def shown_time(value: datetime, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """``value`` in the browser's time zone, formatted, with the zone named: "2026-11-28 19:27 (Europe/Berlin)"."""
    return f"{local_time(value):{fmt}} ({zone_label()})"


def local_rows(rows: list[dict]) -> list[dict]:
    """Table rows with every datetime value as :func:`local_time` shows it."""
    return [{key: local_time(value) if isinstance(value, datetime) else value for key, value in row.items()}
            for row in rows]


def times_caption() -> None:
    """The line under a table with times in it."""
    st.caption(f"Times in {zone_label()}, your browser's time zone.")


def runs_table(runs: list[dict]) -> None:
    """A table of training runs (``annotate.scoring`` / ``annotate.dashboard`` rows), times on the browser's
    clock. Their ``error`` is headed "why": besides a failed run's error it holds a rejected run's promotion
    gate reason and a skipped run's cause, which are no errors."""
    why = st.column_config.TextColumn("why", help="Why the run failed, was rejected (the promotion gate's reason) "
                                                   "or was skipped")
    st.dataframe(local_rows(runs), hide_index=True, width="stretch", column_config={"error": why})
    times_caption()


def run_action(action, success: str, *, flash_key: str) -> None:
    """Run ``action(session)`` in one write unit of work; show why it did not happen (``not_saved_message``),
    or rerun with ``success`` queued under ``flash_key`` for the page to show after the rerun."""
    try:
        get_db().transact(action)
    except (PrefloopError, OperationalError) as exc:
        st.error(not_saved_message(exc))
        return
    st.session_state[flash_key] = [success]
    st.rerun()


def remember_failures(build, failures: list[str]):
    """Wrap a ``st.download_button`` data callable so its failure is remembered.

    Streamlit runs deferred download data outside the script and tells the
    browser only that generating the file failed. The wrapped callable
    appends the reason to ``failures`` (a plain list kept in session state, so
    it is safe to touch from that thread) and re-raises; the page shows and
    clears the list on its next run.
    """
    def run():
        try:
            return build()
        except PrefloopError as exc:
            failures.append(str(exc))
            raise
        except Exception as exc:
            _log.exception("download failed")
            failures.append(f"{type(exc).__name__}: the server could not build the file (details in its log)")
            raise
    return run


def deferred_download(build, failures: list[str]):
    """A ``st.download_button`` data callable for ``build`` that first checks the session as a rerun would.

    A click on a deferred download (``on_click="ignore"``) runs no script, so :func:`refresh_actor` never
    sees it: Streamlit calls the data callable in a worker thread (``asyncio.to_thread``) with no script
    run context, where ``st.session_state`` is a process-wide stand-in, not this session's. So the callable
    keeps this session's own state object, taken here while the script runs, and only reads it there. It
    refuses (``PermissionDenied``, nothing built, no audit entry) when the session no longer holds the user
    it was built for, and when it has been idle past ``PREFLOOP_SESSION_IDLE_MINUTES`` by
    :func:`refresh_actor`'s rule and clock. A refused idle session is left as it is, so its next run logs it
    out exactly as now and says why; until then every such click is refused the same way. Nothing is
    deleted from there: the script thread may be running meanwhile, under another lock, and widget state
    is not this thread's to drop. A press let through counts as activity, as every other action does (each
    reruns the script, which stamps ``LAST_SEEN_KEY``): its time goes into the ``PRESSED_KEY`` list, in
    place, which :func:`refresh_actor`'s idle check reads too. Then ``build`` runs, with its own checks
    (``require_admin``).

    Failures, refusals included, are reported as :func:`remember_failures` does; the browser gets
    Streamlit's "Failed to generate file for download", never the file.
    """
    ctx = get_script_run_ctx()
    state = ctx.session_state if ctx is not None else None
    idle = get_settings().session_idle_minutes
    owner = current_actor()
    pressed: list[float] = st.session_state.setdefault(PRESSED_KEY, [])

    def peek(key: str):
        try:
            return state[key]
        except KeyError:
            return None

    def checked():
        actor = peek(ACTOR_KEY) if state is not None else None
        if owner is None or actor is None or actor.id != owner.id:
            raise PermissionDenied("log in first")
        if _idle_too_long(idle, peek(LAST_SEEN_KEY), pressed):
            raise PermissionDenied(f"this session was idle for more than {idle} minute{'' if idle == 1 else 's'}: "
                                   "log in again")
        pressed[:] = [time.time()]
        return build()
    return remember_failures(checked, failures)
