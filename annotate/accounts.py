"""Local accounts: argon2-hashed passwords, roles, login throttling.

Every admin-only service function calls :func:`require_admin` itself, so the
role is enforced server-side whatever page (or script) calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from annotate.errors import AuthError, NotFound, PermissionDenied, PrefloopError
from annotate.models import AuditEvent, Role, User, utcnow

_hasher = PasswordHasher()
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

    @property
    def is_admin(self) -> bool:
        return self.role is Role.admin


def require_admin(session: Session, actor: Actor | None) -> User:
    """Return the acting admin's row, or raise :class:`PermissionDenied`.

    Checks the database, not the caller's copy of the role, so a demoted or
    deactivated admin loses access at once.
    """
    if actor is None:
        raise PermissionDenied("log in as an admin to do this")
    user = session.get(User, actor.id)
    if user is None or not user.active or user.role is not Role.admin:
        raise PermissionDenied("this action needs the admin role")
    return user


def require_active(session: Session, actor: Actor | None) -> User:
    """Return the acting user's row if it exists and is active."""
    if actor is None:
        raise PermissionDenied("log in first")
    user = session.get(User, actor.id)
    if user is None or not user.active:
        raise PermissionDenied("this account is deactivated")
    return user


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PrefloopError(f"passwords need at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def audit(session: Session, actor: Actor | None, action: str, **detail) -> None:
    """Record an admin action in the audit log."""
    session.add(AuditEvent(actor_id=actor.id if actor else None, action=action, detail=detail))


def create_user(session: Session, username: str, password: str, role: Role | str,
                *, actor: Actor | None = None, system: bool = False) -> User:
    """Create an account. ``system=True`` is for the CLI run by the operator."""
    if not system:
        require_admin(session, actor)
    username = username.strip()
    if not username or len(username) > 64 or not username.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise PrefloopError("usernames are 1-64 letters, digits, '.', '_' or '-'")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise PrefloopError(f"user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password), role=Role(role))
    session.add(user)
    session.flush()
    audit(session, actor, "user.create", username=username, role=Role(role).value)
    return user


def _get_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no user named {username!r}")
    return user


def set_active(session: Session, username: str, active: bool, *, actor: Actor | None = None,
               system: bool = False) -> User:
    if not system:
        admin = require_admin(session, actor)
        if admin.username == username and not active:
            raise PrefloopError("you cannot deactivate your own account")
    user = _get_user(session, username)
    user.active = active
    audit(session, actor, "user.activate" if active else "user.deactivate", username=username)
    return user


def set_role(session: Session, username: str, role: Role | str, *, actor: Actor | None = None,
             system: bool = False) -> User:
    if not system:
        admin = require_admin(session, actor)
        if admin.username == username and Role(role) is not Role.admin:
            raise PrefloopError("you cannot remove your own admin role")
    user = _get_user(session, username)
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


def authenticate(session: Session, username: str, password: str, *, max_failures: int = 5,
                 lockout_seconds: int = 60, now: datetime | None = None) -> Actor:
    """Check credentials; throttle an account after ``max_failures`` wrong passwords.

    The failure count lives in the database, so throttling holds across
    Streamlit sessions, processes and machines.
    """
    now = now or utcnow()
    user = session.scalar(select(User).where(User.username == username.strip()))
    if user is None:
        try:
            _hasher.verify(_DUMMY_HASH, password)
        except VerificationError:
            pass
        raise AuthError("wrong username or password")
    locked_until = user.locked_until
    if locked_until is not None and locked_until.tzinfo is None:
        locked_until = locked_until.replace(tzinfo=timezone.utc)
    if locked_until is not None and locked_until > now:
        wait = int((locked_until - now).total_seconds()) + 1
        raise AuthError(f"too many failed attempts: try again in {wait} s")
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        user.failed_logins += 1
        if user.failed_logins >= max_failures:
            user.locked_until = now + timedelta(seconds=lockout_seconds)
            user.failed_logins = 0
        raise AuthError("wrong username or password") from None
    if not user.active:
        raise AuthError("this account is deactivated; ask an admin")
    user.failed_logins = 0
    user.locked_until = None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return Actor(id=user.id, username=user.username, role=user.role)


def login(db, username: str, password: str, *, max_failures: int = 5, lockout_seconds: int = 60) -> Actor:
    """Authenticate in a unit of work of its own, keeping the failure count even when it fails."""
    error: AuthError | None = None
    with db.begin() as session:
        try:
            return authenticate(session, username, password, max_failures=max_failures,
                                lockout_seconds=lockout_seconds)
        except AuthError as exc:
            error = exc  # leave the block normally so the failure count is committed
    raise error
