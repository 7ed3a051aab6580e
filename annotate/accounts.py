"""Local accounts: argon2-hashed passwords, roles, login throttling.

Every admin-only service function calls :func:`require_admin` itself, so the
role is enforced server-side whatever page (or script) calls it.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import case, delete, func, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotate.errors import AuthError, NotFound, PermissionDenied, PrefloopError
from annotate.models import TS, AuditEvent, Lease, Role, User, utcnow

_hasher = PasswordHasher()
_HASHING = threading.BoundedSemaphore(4)
"""Password hashes computed at once in this process: each takes 64 MiB (argon2id's memory cost), and every
login form submitted at once (each Streamlit session is a thread) took its own, unbounded."""


def _verify(password_hash: str, password: str) -> bool:
    with _HASHING:
        return _hasher.verify(password_hash, password)
# Verifying against a dummy hash when the user does not exist keeps the
# response time the same, so usernames cannot be probed by timing.
_DUMMY_HASH = _hasher.hash("not-a-real-password")
MIN_PASSWORD_LENGTH = 8


@dataclass(frozen=True)
class Actor:
    """Who is calling a service function: the part of a user the UI keeps in its session."""

    id: int
    username: str
    role: Role
    credential: str | None = None
    """Fingerprint of the password hash at login (``credential_of``); a login
    session whose fingerprint no longer matches (the password was reset) is
    refused. ``None`` for the operator's CLI, which has no login session."""

    @property
    def is_admin(self) -> bool:
        return self.role is Role.admin


def credential_of(user: User) -> str:
    """Short fingerprint of ``user``'s password hash: changes whenever the password does."""
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


def actor_of(user: User) -> Actor:
    """The ``Actor`` a login session keeps for ``user``."""
    return Actor(id=user.id, username=user.username, role=user.role, credential=credential_of(user))


def _stale_login(user: User, actor: Actor) -> bool:
    return actor.credential is not None and actor.credential != credential_of(user)


def require_admin(session: Session, actor: Actor | None) -> User:
    """Return the acting admin's row, or raise :class:`PermissionDenied`.

    Checks the database, not the caller's copy of the role, so a demoted or
    deactivated admin, or one whose password was reset, loses access at once.
    """
    if actor is None:
        raise PermissionDenied("log in as an admin to do this")
    user = session.get(User, actor.id)
    if user is None or not user.active or user.role is not Role.admin:
        raise PermissionDenied("this action needs the admin role")
    if _stale_login(user, actor):
        raise PermissionDenied("this account's password was changed: log in again")
    return user


def require_active(session: Session, actor: Actor | None) -> User:
    """Return the acting user's row if it exists, is active and its password is the one logged in with."""
    if actor is None:
        raise PermissionDenied("log in first")
    user = session.get(User, actor.id)
    if user is None or not user.active:
        raise PermissionDenied("this account is deactivated")
    if _stale_login(user, actor):
        raise PermissionDenied("this account's password was changed: log in again")
    return user


def has_active_admin(session: Session) -> bool:
    """Whether any active admin account exists (the login page's hint on a new install)."""
    return session.scalar(select(User.id).where(User.active.is_(True), User.role == Role.admin).limit(1)) is not None


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PrefloopError(f"passwords need at least {MIN_PASSWORD_LENGTH} characters")
    with _HASHING:
        return _hasher.hash(password)


def audit(session: Session, actor: Actor | None, action: str, **detail) -> None:
    """Record an admin action in the audit log."""
    session.add(AuditEvent(actor_id=actor.id if actor else None, action=action, detail=detail))


def create_user(session: Session, username: str, password: str, role: Role | str,
                *, actor: Actor | None = None, system: bool = False) -> User:
    """Create an account. ``system=True`` is for the CLI run by the operator."""
    if not system:
        require_admin(session, actor)
    username = _valid_username(username)
    _refuse_taken(session, username)
    user = User(username=username, password_hash=hash_password(password), role=Role(role))
    try:
        # A savepoint, so the caller's unit of work survives a refused name.
        with session.begin_nested():
            session.add(user)
    except IntegrityError:
        # Created by someone else since the check above (uq_users_username_lower): their
        # transaction committed while this one ran, so the check now sees the name.
        _refuse_taken(session, username)
        raise
    audit(session, actor, "user.create", username=username, role=Role(role).value)
    return user


def _valid_username(username: str) -> str:
    """``username`` without surrounding blanks, or raise if it is not 1-64 ASCII letters, digits, '.', '_' or '-'."""
    username = username.strip()
    # ASCII only: lower() is then the same in Python, SQLite (which folds only ASCII) and PostgreSQL,
    # so uq_users_username_lower refuses what _refuse_taken refuses; and no "саrol" in Cyrillic
    # looks like "carol".
    if (not username or len(username) > 64 or not username.isascii()
            or not username.replace("_", "").replace("-", "").replace(".", "").isalnum()):
        raise PrefloopError("usernames are 1-64 ASCII letters, digits, '.', '_' or '-'")
    return username


def _refuse_taken(session: Session, username: str, *, other_than: int | None = None) -> None:
    """Raise if ``username`` is taken (by an account other than ``other_than``), also by a name that
    differs only in case.

    "carol" beside "Carol" would be two accounts that people, the audit log and the
    annotator table cannot tell apart. The database refuses them too
    (``uq_users_username_lower``); this says which name is in the way.
    """
    query = select(User.username).where(func.lower(User.username) == username.lower())
    if other_than is not None:
        query = query.where(User.id != other_than)
    existing = session.scalars(query.order_by(User.id)).first()
    if existing is not None:
        raise PrefloopError(f"user {existing!r} already exists" if existing == username else
                            f"user {existing!r} already exists; names must differ by more than case")


def _get_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no user named {username!r}")
    return user


def rename_user(session: Session, old: str, new: str, *, actor: Actor | None = None,
                system: bool = False) -> User:
    """Rename the account ``old`` to ``new``, validated like :func:`create_user`'s names.

    Changing only the case of a name ('carol' -> 'Carol') is allowed. The account keeps its id, so its
    judgments, audit entries and open login sessions (which pick up the new name) stay its own. Uses
    only what migration 0001 made, so it also works on a database that migration 0005 refused to
    upgrade because two names differed only in case.
    """
    if not system:
        require_admin(session, actor)
    user = _get_user(session, old)
    new = _valid_username(new)
    if new == user.username:
        raise PrefloopError(f"user {old!r} is already called that")
    _refuse_taken(session, new, other_than=user.id)
    try:
        # A savepoint, as in create_user: the caller's unit of work survives a refused name.
        with session.begin_nested():
            user.username = new
    except IntegrityError:
        # Taken by another account since the check above (uq_users_username_lower, uq_users_username).
        _refuse_taken(session, new, other_than=user.id)
        raise
    audit(session, actor, "user.rename", username=new, old_username=old)
    return user


def _refuse_last_admin(session: Session, user: User, change: str) -> None:
    """Raise if ``user`` is the only active admin: without one, nobody can reach the admin pages.

    On PostgreSQL the active admins' rows are locked (in id order) before they are counted, so two
    admins demoting or deactivating each other at once cannot both succeed: the second waits, then
    counts again. (SQLite runs one writer at a time.)
    """
    if not user.active or user.role is not Role.admin:
        return
    query = (select(User.id).where(User.active.is_(True), User.role == Role.admin).order_by(User.id)
             .with_for_update(key_share=True))
    if not [uid for uid in session.scalars(query) if uid != user.id]:
        raise PrefloopError(f"{user.username!r} is the only active admin: {change} would leave nobody who can "
                            "open the admin pages. Make another account an admin first (Users page, or "
                            "'prefloop users set-role NAME --role admin' or 'prefloop users add NAME --role admin')")


def release_leases(session: Session, *where) -> int:
    """Delete the unskipped leases matching ``where`` (the pairs they hold), so others are served those
    pairs now; returns how many.

    Skipped leases stay: they hold no pair from anyone (they expired when skipped) and keep the pair
    from being served to that user again. The rows are locked in id order first, after anything the
    caller wrote (flushed here): the queue's lock order (``annotate.queue``), lease rows before a
    comparison row. Deactivating a user, Log out and retiring a pair use it.
    """
    session.flush()
    held = select(Lease.id).where(Lease.skipped.is_(False), *where)
    ids = list(session.scalars(held.order_by(Lease.id).with_for_update()))
    if ids:
        session.execute(delete(Lease).where(Lease.id.in_(ids)).execution_options(synchronize_session=False))
    return len(ids)


def set_active(session: Session, username: str, active: bool, *, actor: Actor | None = None,
               system: bool = False) -> User:
    """Activate or deactivate ``username``.

    Deactivating releases the pairs the user holds in the same transaction (their leases would
    otherwise keep them from everyone else until they expire), and is refused for the only active
    admin.
    """
    if not system:
        admin = require_admin(session, actor)
        if admin.username == username and not active:
            raise PrefloopError("you cannot deactivate your own account")
    user = _get_user(session, username)
    if bool(user.active) == bool(active):
        return user  # nothing to change (the second press of a double click): no second audit entry
    if not active:
        _refuse_last_admin(session, user, "deactivating it")
    user.active = active
    if not active:
        release_leases(session, Lease.annotator_id == user.id)
    audit(session, actor, "user.activate" if active else "user.deactivate", username=username)
    return user


def set_role(session: Session, username: str, role: Role | str, *, actor: Actor | None = None,
             system: bool = False) -> User:
    """Make ``username`` an admin or an annotator; refused for the only active admin's demotion.

    The pairs the user holds are kept: admins annotate too, on the same page.
    """
    if not system:
        admin = require_admin(session, actor)
        if admin.username == username and Role(role) is not Role.admin:
            raise PrefloopError("you cannot remove your own admin role")
    user = _get_user(session, username)
    if user.role == Role(role):
        return user  # nothing to change (the second press of a double click): no second audit entry
    if Role(role) is not Role.admin:
        _refuse_last_admin(session, user, "making it an annotator")
    user.role = Role(role)
    audit(session, actor, "user.role", username=username, role=Role(role).value)
    return user


def reset_password(session: Session, username: str, password: str, *, actor: Actor | None = None,
                   system: bool = False) -> User:
    if not system:
        require_admin(session, actor)
    user = _get_user(session, username)
    user.password_hash = hash_password(password)
    user.failed_logins = 0
    user.locked_until = None
    audit(session, actor, "user.reset_password", username=username)
    return user


def list_users(session: Session, *, actor: Actor) -> list[User]:
    require_admin(session, actor)
    return list(session.scalars(select(User).order_by(User.username)))


def _dummy_verify(password: str) -> None:
    try:
        _verify(_DUMMY_HASH, password)
    except VerificationError:
        pass


def _locked_error(locked_until: datetime, now: datetime) -> AuthError:
    return AuthError(f"too many failed attempts: try again in {int((locked_until - now).total_seconds()) + 1} s")


class _UnknownNames:
    """Failed logins under usernames that do not exist, counted and locked like an account's (in this
    process, the most recent ``capacity`` names), so "too many failed attempts" does not tell that a name
    exists: it was said only for real accounts, and an unknown name answered "wrong username or password"
    forever."""

    def __init__(self, capacity: int = 10_000):
        self._capacity = capacity
        self._entries: dict[str, tuple[int, datetime | None]] = {}  # insertion order: the oldest goes first
        self._lock = threading.Lock()

    @staticmethod
    def _key(username: str) -> str:
        # As login looks accounts up: by the name as typed, spaces stripped. Folding case here let "BOB"'s
        # failures lock "bob", which then answered "locked" for no account and "wrong" for a real one.
        return hashlib.sha256(username.strip().encode()).hexdigest()

    def locked_until(self, username: str, now: datetime) -> datetime | None:
        with self._lock:
            _, until = self._entries.get(self._key(username), (0, None))
        return until if until is not None and until > now else None

    def fail(self, username: str, *, max_failures: int, lockout_seconds: int, now: datetime) -> None:
        key = self._key(username)
        with self._lock:
            count, until = self._entries.get(key, (0, None))
            if until is not None and until > now:
                return  # a guess checked before the lock was set: the lock stays, as an account's does
            self._entries.pop(key, None)
            if until is not None:
                count = 0  # the lock ran out: counting starts again, as an account's does
            count += 1
            self._entries[key] = (0, now + timedelta(seconds=lockout_seconds)) if count >= max_failures else (count, None)
            if len(self._entries) > self._capacity:
                self._forget(now)

    def _forget(self, now: datetime) -> None:
        """Down to capacity: names not locked (or whose lock ran out) go first, oldest first; then locked ones.
        Dropping the oldest regardless let failures under 10,000 other names unlock a name an account keeps."""
        excess = len(self._entries) - self._capacity
        unlocked = [k for k, (_, until) in self._entries.items() if until is None or until <= now][:excess]
        for key in unlocked:
            del self._entries[key]
        while len(self._entries) > self._capacity:
            del self._entries[next(iter(self._entries))]


_unknown_names = _UnknownNames()


def _check_password(user: User | None, password: str, now: datetime) -> bool:
    """Whether ``password`` is ``user``'s; raises while the account is locked. No writes.

    An unknown user, and a locked account, is verified against a dummy hash, so the response time does
    not tell which usernames exist (a locked account answered at once).
    """
    if user is None:
        _dummy_verify(password)
        return False
    locked_until = _aware(user.locked_until)
    if locked_until is not None and locked_until > now:
        _dummy_verify(password)
        raise _locked_error(locked_until, now)
    try:
        return _verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _aware(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=timezone.utc) if t is not None and t.tzinfo is None else t


def _record_failure(session: Session, user_id: int, *, max_failures: int, lockout_seconds: int,
                    now: datetime) -> None:
    """Count one wrong password in a single UPDATE, locking the account at ``max_failures``.

    The count is read and written by the database, never in Python, so
    simultaneous wrong guesses cannot overwrite each other's counts and slip
    past the limit.
    """
    reached = User.failed_logins + 1 >= max_failures
    session.execute(
        update(User).where(User.id == user_id).values(
            # typed as the column, so SQLite stores it in the column's (naive UTC) form
            locked_until=case((reached, literal(now + timedelta(seconds=lockout_seconds), TS)),
                              else_=User.locked_until),
            failed_logins=case((reached, 0), else_=User.failed_logins + 1))
        .execution_options(synchronize_session=False))


def _record_success(session: Session, user_id: int, checked_hash: str, now: datetime) -> bool:
    """Clear the failure count unless the account changed since the check; ``False`` if it did.

    The password was checked (against ``checked_hash``) outside any
    transaction. A lock set since, by wrong guesses racing this one, still
    refuses the login, so parallel guesses get no more tries than
    ``max_failures``; a password reset since refuses it too, so the old
    password does not get in once more after the reset.
    """
    result = session.execute(
        update(User).where(User.id == user_id, User.password_hash == checked_hash,
                           (User.locked_until.is_(None)) | (User.locked_until <= now))
        .values(failed_logins=0, locked_until=None)
        .execution_options(synchronize_session=False))
    return result.rowcount == 1


def authenticate(session: Session, username: str, password: str, *, max_failures: int = 5,
                 lockout_seconds: int = 60, now: datetime | None = None) -> Actor:
    """Check credentials in ``session``; throttle an account after ``max_failures`` wrong passwords.

    The failure count lives in the database, so throttling holds across
    Streamlit sessions, processes and machines. ``login`` is the same check
    without holding a write transaction through the slow hash.
    """
    now = now or utcnow()
    user = session.scalar(select(User).where(User.username == username.strip()))
    ok = _check_password(user, password, now)
    return _finish(session, user, ok, user.password_hash if user else "", password,
                   max_failures=max_failures, lockout_seconds=lockout_seconds, now=now)


def _finish(session: Session, user: User | None, ok: bool, checked_hash: str, password: str, *,
            max_failures: int, lockout_seconds: int, now: datetime) -> Actor:
    """Record the outcome of checking ``password`` against ``checked_hash`` and return the actor.

    ``session`` holds ``user``, read again after the check.
    """
    if user is None:
        raise AuthError("wrong username or password")
    if not ok:
        _record_failure(session, user.id, max_failures=max_failures, lockout_seconds=lockout_seconds, now=now)
        raise AuthError("wrong username or password")
    if not _record_success(session, user.id, checked_hash, now):
        session.refresh(user)
        locked_until = _aware(user.locked_until)
        if locked_until is not None and locked_until > now:
            raise _locked_error(locked_until, now)
        # the password was reset while it was checked: the checked one may be the old one
        raise AuthError("wrong username or password")
    session.refresh(user)
    if not user.active:
        raise AuthError("this account is deactivated; ask an admin")
    if _hasher.check_needs_rehash(user.password_hash):
        with _HASHING:
            user.password_hash = _hasher.hash(password)
    return actor_of(user)


def login(db, username: str, password: str, *, max_failures: int = 5, lockout_seconds: int = 60) -> Actor:
    """Authenticate, keeping the failure count even when it fails.

    The slow password hash is checked outside any transaction, and only the
    outcome is written, in a short transaction of its own: on SQLite a write
    transaction locks the whole database, so holding one through argon2
    (0.1-0.3 s) would let anyone at the login page stall every annotator's
    writes.
    """
    now = utcnow()
    with db.read() as session:
        user = session.scalar(select(User).where(User.username == username.strip()))
        if user is not None:
            session.expunge(user)  # keep its loaded columns for the check below
    if user is None:
        locked_until = _unknown_names.locked_until(username, now)
        _dummy_verify(password)
        if locked_until is not None:
            raise _locked_error(locked_until, now)
        _unknown_names.fail(username, max_failures=max_failures, lockout_seconds=lockout_seconds, now=now)
        raise AuthError("wrong username or password")
    ok = _check_password(user, password, now)
    user_id, checked_hash = user.id, user.password_hash
    error: AuthError | None = None
    with db.begin() as session:
        user = session.get(User, user_id)
        try:
            return _finish(session, user, ok, checked_hash, password, max_failures=max_failures,
                           lockout_seconds=lockout_seconds, now=now)
        except AuthError as exc:
            error = exc  # leave the block normally so the failure count is committed
    raise error
