"""The ``prefloop`` command line.

Every command reads settings from ``PREFLOOP_*`` variables. Errors a user can
cause (a bad option, file or --out path) print their message (no traceback) and
exit with status 2; any other file or folder the system refuses (permissions, a
read-only disk) prints the system's reason and exits with status 1.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import json
import os
import sys
import threading
from datetime import datetime
from pathlib import Path

from annotate.errors import ImportValidationError, PrefloopError
from annotate.settings import MAX_OVERLAP
from annotate.simulate_options import add_arguments as add_simulate_arguments


def _settings():
    from annotate.settings import load_settings, unknown_variables

    for line in unknown_variables():
        print(f"prefloop: warning: {line}", file=sys.stderr)
    return load_settings()


DESCRIPTION = ("prefloop: human-preference annotation with a reward model in the loop. Settings come from "
               "PREFLOOP_* environment variables (PREFLOOP_DATABASE_URL, PREFLOOP_DATA_DIR, ...).")


def _shown_url(url: str) -> str:
    """``url`` for a message or a log: its password ``***``, in the user part or a ``password=`` parameter."""
    from sqlalchemy.engine import make_url

    sa_url = make_url(url)
    shown = sa_url.difference_update_query(["password"]).render_as_string(hide_password=True)
    return f"{shown}{'&' if '?' in shown else '?'}password=***" if "password" in sa_url.query else shown


class SystemRefused(PrefloopError):
    """The system refused a file or folder prefloop itself needs (the database's, say): exit status 1."""


def _database_setting(settings) -> str:
    """The variable that chose the database: PREFLOOP_DATABASE_URL when set, else PREFLOOP_DATA_DIR."""
    return "PREFLOOP_DATABASE_URL" if settings.database_url else "PREFLOOP_DATA_DIR"


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database URL; None for another database, an in-memory one or a ``file:`` URI."""
    from sqlalchemy.engine import make_url

    from annotate.settings import in_memory_sqlite

    sa_url = make_url(url)
    database = sa_url.database or ""
    if sa_url.get_backend_name() != "sqlite" or in_memory_sqlite(url) or database.startswith("file:"):
        return None
    return Path(database)


def _unreachable(settings, exc: Exception) -> PrefloopError:
    """A one-line error for a database that refused the connection (the URL without its password).

    A SQLite file the system will not open (a read-only folder, say) is a refused file: exit status 1.
    """
    url = settings.sqlalchemy_url
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    path = _sqlite_file(url)
    if path is None:
        return PrefloopError(f"cannot open the database {_shown_url(url)}: {reason}; "
                             f"check {_database_setting(settings)}")
    folder = path.resolve().parent
    if folder.is_dir() and not os.access(folder, os.W_OK):
        reason += f" (SQLite writes its journal beside the database, and the folder {folder} is not writable)"
    return SystemRefused(f"cannot open the SQLite database {path.resolve()}: {reason}; "
                         f"check {_database_setting(settings)}")


def _require_schema(settings, *, behind_ok: bool = False) -> None:
    """Refuse to go on unless the database is reachable and migrated to this prefloop's head
    (``behind_ok``: or to an older revision this prefloop knows).

    Without it, a command on a fresh or older database failed half-way with an SQL traceback.
    A SQLite file that does not exist is not created (with its folder) on the way: a relative
    PREFLOOP_DATA_DIR run from another folder made an empty database there.
    """
    from sqlalchemy.exc import DBAPIError

    from annotate import migrate

    url = settings.sqlalchemy_url
    path = _sqlite_file(url)
    if path is not None and not path.exists():
        if path.is_absolute():
            raise PrefloopError(f"no database at {path}: run 'prefloop db upgrade' to create it")
        raise PrefloopError(f"no database at {path.resolve()}: {_database_setting(settings)} is relative to the "
                            "folder prefloop runs in, so run prefloop from the project folder (where 'make run' "
                            "made it) or give an absolute path; for a new database, run 'prefloop db upgrade'")
    try:
        current = migrate.current_heads(url)
    except DBAPIError as exc:
        raise _unreachable(settings, exc) from None
    script = migrate.script_directory(url)
    heads = set(script.get_heads())
    if current == heads:
        return
    known = {rev.revision for rev in script.walk_revisions()}
    if behind_ok and current and current <= known:
        return
    if not current:
        raise PrefloopError(f"the database {_shown_url(url)} has no prefloop tables yet: run 'prefloop db upgrade'")
    if current - known:
        raise PrefloopError(f"the database {_shown_url(url)} is at revision {', '.join(sorted(current))}, which "
                            "this prefloop does not know (a newer prefloop migrated it): upgrade prefloop")
    raise PrefloopError(f"the database {_shown_url(url)} is at revision {', '.join(sorted(current))}, this prefloop "
                        f"needs {', '.join(sorted(heads))}: run 'prefloop db upgrade'")


def _db(settings):
    from annotate.db import open_database

    _require_schema(settings)
    return open_database(settings)


def _instant(value: str) -> datetime:
    """argparse type for --since/--until: an ISO 8601 date or date-time."""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO date or date-time, e.g. 2026-11-01 or 2026-11-01T09:30:00+00:00") from None


def _overlap(value: str) -> int:
    """argparse type for import --overlap: an integer from 1 to MAX_OVERLAP."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_OVERLAP:
        raise argparse.ArgumentTypeError(f"{value!r}: give a whole number from 1 to {MAX_OVERLAP}")
    return n


def _min_votes(value: str) -> int:
    """argparse type for export --min-votes: a whole number, at least 1."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give a whole number, at least 1")
    return n


def _poll_seconds(value: str) -> float:
    """argparse type for retrain --poll-seconds: a number of seconds from 0.1 to 3600."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of seconds from 0.1 to 3600")
    return seconds


def _cannot_write(path, exc: OSError) -> PrefloopError:
    return PrefloopError(f"cannot write {str(path)!r}: {exc.strerror or exc}")


def _check_out_file(out: Path) -> None:
    """Refuse, before any work, an --out file that cannot be written (scoring a large file takes minutes)."""
    if out.is_dir():
        raise PrefloopError(f"{str(out)!r} is a folder: give a file name")
    if not out.parent.is_dir():
        raise PrefloopError(f"folder {str(out.parent)!r} does not exist: create it or pick another path")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        code = errno.EROFS if os.statvfs(out.parent).f_flag & os.ST_RDONLY else errno.EACCES
        raise _cannot_write(out, OSError(code, os.strerror(code)))


def _read_password(args) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat: ") != password:
            raise PrefloopError("the passwords do not match")
    return password


def _operator_admin(session, settings, username: str | None):
    """The admin an operator's CLI command acts as (for the audit log and role checks)."""
    from sqlalchemy import select

    from annotate.accounts import Actor
    from annotate.models import Role, User
    from annotate.settings import operator_command

    query = select(User).where(User.role == Role.admin, User.active.is_(True))
    if username:
        query = query.where(User.username == username)
    user = session.scalars(query.order_by(User.id)).first()
    if user is None:
        add = operator_command(settings, "prefloop users add NAME --role admin")
        raise PrefloopError(f"no active admin {username!r}" if username else
                            f"no active admin exists: create one with '{add.line}'"
                            + (f" ({add.note})" if add.note else ""))
    return Actor(id=user.id, username=user.username, role=user.role)


# --- commands ---------------------------------------------------------------

def cmd_db(args) -> int:
    from alembic.util import CommandError
    from sqlalchemy.exc import DBAPIError

    from annotate import migrate
    from annotate.settings import in_memory_sqlite

    settings = _settings()
    url = settings.sqlalchemy_url
    if args.action in ("backup", "restore"):
        return _backup_or_restore(args, settings)
    if args.replace:
        raise PrefloopError("--replace goes with 'db restore'")
    path = _sqlite_file(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SystemRefused(f"cannot create the folder {path.parent.resolve()} for the SQLite database: "
                                f"{exc.strerror or exc}; check {_database_setting(settings)}") from None
    try:
        if args.action == "upgrade":
            migrate.upgrade(url, args.revision or "head")
        elif args.action == "downgrade":
            if not args.revision:
                raise PrefloopError("say which revision to downgrade to, e.g. 'prefloop db downgrade base'")
            migrate.downgrade(url, args.revision)
        if in_memory_sqlite(url):
            # Each connection has its own, so reading the revision back found a new, empty one ("at revision base").
            print(f"{args.action}d an in-memory SQLite database, which is gone now that the command has ended: "
                  f"nothing was kept; point {_database_setting(settings)} at a file or a server to keep one")
            return 0
        heads = migrate.current_heads(url)
    except CommandError as exc:  # an unknown revision, say
        raise PrefloopError(str(exc)) from None
    except DBAPIError as exc:
        if _refused_statement(exc):
            raise _migration_failed(url, args.action, exc) from None
        raise _unreachable(settings, exc) from None
    print(f"database at revision {', '.join(sorted(heads)) or 'base'}")
    return 0


def _backup_or_restore(args, settings) -> int:
    from sqlalchemy.exc import DBAPIError

    from annotate import backup

    url = settings.sqlalchemy_url
    if not args.revision:
        raise PrefloopError(f"say which file to {'write' if args.action == 'backup' else 'restore'}, e.g. "
                            f"'prefloop db {args.action} prefloop-backup.{'db' if _sqlite_file(url) else 'dump'}'")
    try:
        if args.action == "backup":
            if args.replace:
                raise PrefloopError("--replace goes with 'db restore' (a backup never overwrites a file)")
            _require_schema(settings, behind_ok=True)
            report = backup.backup(url, Path(args.revision))
            what = (report.contents.describe() if report.contents
                    else "pg_dump custom format, read back with pg_restore --list")
            print(f"backed up {_shown_url(url)} to {report.path} ({report.size:,} bytes; {what})")
            active = report.contents.active_model if report.contents else _active_artifact(settings)
            if active:
                print(f"the active reward model's files are not in the backup: copy "
                      f"{settings.data_dir / active} with it (or, after a restore without them, run 'prefloop retrain "
                      "--once --force', with --replace-missing on another machine)")
            return 0

        def run_in_progress() -> bool:
            from annotate.db import open_database
            from annotate.retrain import run_alive

            db = open_database(settings, null_pool=True)
            try:
                return run_alive(db)
            except DBAPIError:  # an older schema without the lock table: no run of this prefloop
                return False
            finally:
                db.dispose()

        report = backup.restore(url, Path(args.revision), data_dir=settings.data_dir, replace=args.replace,
                                run_in_progress=run_in_progress)
    except DBAPIError as exc:
        raise _unreachable(settings, exc) from None
    if report.saved is not None:
        print(f"the database as it was is saved at {report.saved.path}")
    print(f"restored {args.revision} into {_shown_url(url)} ({report.contents.describe()})")
    for note in report.notes:
        print(note)
    if report.contents.active_model and not (settings.data_dir / report.contents.active_model).exists():
        print(f"the active reward model's files are not at {settings.data_dir / report.contents.active_model}: "
              "copy them there from the backup's machine, or run 'prefloop retrain --once --force "
              "--replace-missing'")
    return 0


def _active_artifact(settings) -> str | None:
    from sqlalchemy import select

    from annotate.db import open_database
    from annotate.models import ModelVersion

    db = open_database(settings, null_pool=True)
    try:
        with db.read() as session:
            return session.scalar(select(ModelVersion.artifact_path).where(ModelVersion.is_active.is_(True)))
    finally:
        db.dispose()


def _refused_statement(exc) -> bool:
    """Whether the database ran a statement and refused it (a duplicate, a missing table), rather
    than could not be reached, opened or written (``_unreachable``'s errors)."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    if exc.connection_invalidated:
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)  # PostgreSQL's error class: its first two characters
    if sqlstate:
        # connection, authentication, no such database, resources, operator intervention, system
        return sqlstate[:2] not in ("08", "28", "3D", "53", "57", "58")
    sqlite_error = getattr(exc.orig, "sqlite_errorname", None)
    if sqlite_error:
        # SQLite reports a statement's error (no such table, already exists) as an OperationalError too
        return sqlite_error.split("_")[1] in ("ERROR", "CONSTRAINT", "MISMATCH", "RANGE", "TOOBIG")
    return not isinstance(exc, (OperationalError, InterfaceError))


def _migration_failed(url: str, action: str, exc) -> PrefloopError:
    """A one-line error for a migration the database refused: the revision (when the traceback
    passes through a migration script), the database's reason and the revision it is left at."""
    import traceback

    from sqlalchemy.exc import DBAPIError

    from annotate import migrate

    versions = migrate.MIGRATIONS_DIR / "versions"
    revision = next((frame.f_globals.get("revision") for frame, _ in traceback.walk_tb(exc.__traceback__)
                     if Path(frame.f_code.co_filename).parent == versions), None)
    lines = str(exc.orig or exc).strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    try:
        left_at = f"; the database is at revision {', '.join(sorted(migrate.current_heads(url))) or 'base'}"
    except DBAPIError:
        left_at = ""
    what = f"migration {revision}" if revision else "a migration"
    return PrefloopError(f"{what} failed ({action}): the database refused it: {reason}{left_at}")


def cmd_users(args) -> int:
    from annotate import accounts
    from annotate.db import open_database

    settings = _settings()
    # rename needs only the users table (migration 0001): it is the way past migration 0005's
    # refusal of names that differ only in case, so it works on a database behind this prefloop.
    _require_schema(settings, behind_ok=args.action == "rename")
    db = open_database(settings)
    with db.begin() as session:
        if args.action == "add":
            accounts.create_user(session, args.name, _read_password(args), args.role, system=True)
            print(f"created {args.role} {args.name!r}")
        elif args.action in ("deactivate", "activate"):
            active = args.action == "activate"
            was = _account_state(session, args.name)
            accounts.set_active(session, args.name, active, system=True)  # unchanged: no audit entry either
            print(f"{args.name!r} was already {'active' if active else 'inactive'}" if was.active == active
                  else f"{args.action}d {args.name!r}")
        elif args.action == "reset-password":
            accounts.reset_password(session, args.name, _read_password(args), system=True)
            print(f"password reset for {args.name!r}")
        elif args.action == "set-role":
            was = _account_state(session, args.name)
            accounts.set_role(session, args.name, args.role, system=True)
            print(f"{args.name!r} was already {args.role}" if was.role.value == args.role
                  else f"{args.name!r} is now {args.role}")
        elif args.action == "rename":
            user = accounts.rename_user(session, args.name, args.new_name, system=True)
            print(f"renamed {args.name!r} to {user.username!r}")
        elif args.action == "list":
            from sqlalchemy import select

            from annotate.models import User

            for user in session.scalars(select(User).order_by(User.username)):
                print(f"{user.username}\t{user.role.value}\t{'active' if user.active else 'inactive'}")
    return 0


def _account_state(session, username: str):
    """``(active, role)`` of ``username`` before a change, to say when there was nothing to change
    (None for no such user: the change itself then says so)."""
    from sqlalchemy import select

    from annotate.models import User

    return session.execute(select(User.active, User.role).where(User.username == username)).first()


def cmd_import(args) -> int:
    from annotate import ingest

    settings = _settings()
    db = _db(settings)
    try:
        # Read and checked before the write transaction: on SQLite its first statement takes the write lock,
        # and annotators' judgments would wait on it for the whole read.
        prepared = ingest.prepare_import(settings, Path(args.file), filename=Path(args.file).name, fmt=args.format,
                                         source_tag=args.tag, known_winner=args.known_winner)
        with db.begin() as session:  # overlap None: the campaign's, as on the Import page
            report = ingest.import_file(session, settings, prepared, system=True, overlap=args.overlap)
    except ImportValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        listing = ingest.problems_message(exc.problems, count=exc.count)
        if exc.problems and listing.split(";")[0] not in str(exc):
            # A file-level error (e.g. no row had a known format) with row problems behind it.
            print(listing.split("\n", 1)[1], file=sys.stderr)
        if "nothing was imported" not in str(exc):
            print("nothing was imported.", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def _export_filter(args):
    from annotate.export import ExportFilter

    return ExportFilter(
        since=args.since, until=args.until, annotators=tuple(args.annotator or ()), raters=tuple(args.rater or ()),
        source_tags=tuple(args.tag or ()), include_ties=args.include_ties,
        include_both_bad=args.include_both_bad, exclude_gold=args.exclude_gold,
        min_agreement=args.min_agreement, min_votes=args.min_votes, include_imported=not args.no_imported)


def cmd_export(args) -> int:
    from annotate import export

    settings = _settings()
    db = _db(settings)
    filters = _export_filter(args)
    out = Path(args.out)
    with db.read() as session:
        actor = _operator_admin(session, settings, args.as_admin)
    # export.save reads one snapshot without the write lock (annotators keep judging while a long
    # export runs) and records the audit event afterwards in a short write.
    if args.format in ("trl-jsonl", "trl-parquet", "datasets"):
        kind, fmt = "preferences", {"trl-jsonl": "jsonl", "trl-parquet": "parquet", "datasets": "datasets"}[args.format]
    else:
        kind, fmt = "judgments", {"judgments-csv": "csv", "judgments-jsonl": "jsonl",
                                  "judgments-parquet": "parquet"}[args.format]
    try:
        n = export.save(db, out, actor=actor, kind=kind, format=fmt, filters=filters, margin=args.margin)
    except OSError as exc:
        # The export writes under a hidden name next to --out; name the path the operator gave.
        raise _cannot_write(out, exc) from None
    from annotate.ingest import counted

    print(f"wrote {counted(n, 'row')} to {out}")
    if fmt == "jsonl" and (untyped := export.untyped_json_columns(out)):
        print(f"warning: datasets.load_dataset('json') types each column from a file's first "
              f"{export.DATASETS_JSON_BLOCK >> 20} MB, where {', '.join(untyped)} "
              f"{'is' if len(untyped) == 1 else 'are'} empty in every row, so it cannot load this file: export "
              f"--format {'judgments' if kind == 'judgments' else 'trl'}-parquet (typed columns), or pass "
              "features= to load_dataset", file=sys.stderr)
    if n == 0 and fmt != "datasets":
        kind_name = {"jsonl": "JSON Lines", "parquet": "Parquet", "csv": "CSV"}[fmt]
        print(f"warning: no rows matched; datasets.load_dataset cannot load an empty {kind_name} file",
              file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from annotate import demo

    settings = _settings()
    db = _db(settings)
    demo.load_demo(db, settings, print_credentials=True)
    return 0


def cmd_retrain(args) -> int:
    from annotate import retrain

    settings = _settings()
    if args.once and args.poll_seconds is not None:
        raise PrefloopError("--poll-seconds goes with --watch")
    retrain.log_to_stderr()
    if args.watch:
        if args.force:
            raise PrefloopError("--force goes with --once: the watcher retrains when new judgments or pairs arrive")
        # The schema check does not stop the watcher: it outlives a database that is down, not migrated yet or
        # not made yet (make run starts it beside the app), says why once and checks again at each poll.
        retrain.watch(settings, ready=lambda: _require_schema(settings),
                      **({} if args.poll_seconds is None else {"poll_seconds": args.poll_seconds}))
        return 0
    if args.replace_missing and not args.once:
        raise PrefloopError("--replace-missing goes with --once")
    _require_schema(settings)
    # SIGTERM (a deploy, a scheduler's timeout) or Ctrl-C stops the run at its next step, recorded as
    # stopped, as the watcher's run is; a second one stops at once.
    with retrain.stop_on_signals(threading.Event()) as stop:
        result = retrain.run_once(settings, force=args.force, replace_missing=args.replace_missing, stop=stop)
    print(result.summary())
    return 0 if result.status in ("succeeded", "rejected", "skipped") else 1


def cmd_score(args) -> int:
    from annotate import scoring

    settings = _settings()
    if args.file and (args.prompt is not None or args.response is not None):
        raise PrefloopError("give either --file or --prompt and --response, not both")
    if not args.file and (args.prompt is None or args.response is None):
        raise PrefloopError("give --prompt and --response, or --file in.jsonl")
    if args.out and not args.file:
        raise PrefloopError("--out goes with --file; a single score is printed")
    if not args.file and (problem := scoring.row_problem(args.prompt, args.response)):
        raise PrefloopError(f"cannot score: {problem}")  # before the database and the model are read
    if args.out:
        _check_out_file(Path(args.out))
    if args.model is None:
        _require_schema(settings)
    if args.file:
        rows = scoring.score_file(settings, Path(args.file), model_path=args.model)
        try:
            out = sys.stdout if not args.out else open(args.out, "w", encoding="utf-8")
        except OSError as exc:
            raise _cannot_write(args.out, exc) from None
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        if args.out:
            out.close()
        return 0
    (row,) = scoring.score_texts(settings, [args.prompt], [args.response], model_path=args.model)
    print(json.dumps(row, ensure_ascii=False))
    return 0


def cmd_simulate(args) -> int:
    from annotate import simulate

    return simulate.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefloop", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("db", help="apply or revert database migrations; back up or restore the database",
                       description="Apply (upgrade) or revert (downgrade) database migrations and print the "
                                   "revision the database is at; or write a consistent copy of the database while "
                                   "the app runs (backup FILE: SQLite's online backup, or pg_dump) and make the "
                                   "database what such a copy holds (restore FILE).")
    p.add_argument("action", choices=["upgrade", "downgrade", "backup", "restore"],
                   help="upgrade: migrate to this prefloop's schema (what 'make run' does); downgrade: revert; "
                        "backup FILE: write a new file; restore FILE: replace the database with a backup")
    p.add_argument("revision", nargs="?", metavar="REVISION|FILE",
                   help="target revision (upgrade: default head; downgrade: required, e.g. base); "
                        "the backup file (backup, restore)")
    p.add_argument("--replace", action="store_true",
                   help="restore: replace a database that has prefloop tables (it is first backed up under "
                        "PREFLOOP_DATA_DIR/backups/)")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("users", help="manage local accounts",
                       description="Manage local accounts. Passwords are read from a prompt, or from the first "
                                   "line of standard input (--password-stdin, or when it is not a terminal); "
                                   "never from the command line.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("add", help="create an account")
    a.add_argument("name", help="the username to log in with")
    a.add_argument("--role", choices=["admin", "annotator"], default="annotator", help="default: annotator")
    a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    a = actions.add_parser("deactivate", help="block an account's logins (its judgments stay)")
    a.add_argument("name", help="the account's username")
    a = actions.add_parser("activate", help="let a deactivated account log in again")
    a.add_argument("name", help="the account's username")
    a = actions.add_parser("reset-password", help="set a new password (ends the user's open sessions)")
    a.add_argument("name", help="the account's username")
    a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    a = actions.add_parser("set-role", help="make an account an admin or an annotator")
    a.add_argument("name", help="the account's username")
    a.add_argument("--role", choices=["admin", "annotator"], required=True, help="the account's new role")
    a = actions.add_parser("rename", help="change an account's username (its judgments and sessions stay its own); "
                                          "works on a database 'db upgrade' refused")
    a.add_argument("name", help="the account's username")
    a.add_argument("new_name", metavar="NEW", help="the new username (changing only its case is allowed)")
    actions.add_parser("list", help="print every account: name, role, active/inactive (tab-separated)")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("import", help="import prompts, responses and comparisons")
    p.add_argument("file", help="JSONL (.jsonl, .jsonl.gz), a .json array, or CSV")
    p.add_argument("--format", choices=["pairs", "kwise", "trl", "hh"],
                   help="pairs (prompt, response_a, response_b), kwise (prompt, responses), trl (prompt/chosen/"
                        "rejected), hh (Anthropic HH chosen/rejected transcripts); default: detect from the columns")
    p.add_argument("--tag", help="source tag for everything in the file (over the rows' own tag or source)")
    p.add_argument("--known-winner", choices=["judgment", "gold", "ignore"], default="judgment",
                   help="what a known winner becomes (default: an imported judgment)")
    p.add_argument("--overlap", type=_overlap, metavar="N",
                   help=f"judgments each new comparison needs, 1 to {MAX_OVERLAP} (default: the campaign's "
                        "overlap, as on the Import page)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export preferences (TRL) or raw judgments")
    p.add_argument("--format", required=True,
                   choices=["trl-jsonl", "trl-parquet", "datasets", "judgments-csv", "judgments-jsonl",
                            "judgments-parquet"],
                   help="trl-*: one preference row per comparison (prompt, chosen, rejected); datasets: a "
                        "Hugging Face datasets folder (load_from_disk); judgments-*: every raw judgment")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="file to write (a folder for datasets); replaced whole if it exists")
    p.add_argument("--since", type=_instant, metavar="ISO",
                   help="ISO date/time (UTC if naive): only votes cast at or after it")
    p.add_argument("--until", type=_instant, metavar="ISO",
                   help="ISO date/time (UTC if naive), exclusive: preferences as the votes stood "
                        "just before it (revisions and undos made later are not applied)")
    p.add_argument("--annotator", action="append", metavar="NAME", help="only this annotator's judgments "
                                                                        "(repeat for several)")
    p.add_argument("--rater", action="append", metavar="NAME",
                   help="only this imported rater's judgments (the 'annotator' an imported row named; repeat "
                        "for several; with --annotator, both count)")
    p.add_argument("--tag", action="append", metavar="T", help="only this source tag (repeat for several)")
    p.add_argument("--include-ties", action="store_true",
                   help="trl-*/datasets: also export comparisons whose majority is a tie, with an is_tie column")
    p.add_argument("--include-both-bad", action="store_true",
                   help="trl-*/datasets: also export comparisons whose majority is 'both bad', with an "
                        "is_both_bad column")
    p.add_argument("--exclude-gold", action="store_true", help="leave out gold comparisons")
    p.add_argument("--no-imported", action="store_true",
                   help="leave out imported judgments (the Export page's 'Count imported judgments' unticked)")
    p.add_argument("--min-agreement", type=float, default=0.0, metavar="X",
                   help="drop comparisons whose majority share of the votes is below X (0 to 1)")
    p.add_argument("--min-votes", type=_min_votes, default=1, metavar="N",
                   help="drop comparisons with fewer than N counted votes (one vote has agreement 1.0)")
    p.add_argument("--margin", action="store_true", help="add a margin column from strength")
    p.add_argument("--as-admin", metavar="NAME", help="admin to record in the audit log (default: the first admin)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="load the demo dataset and demo accounts",
                       description="Load the demo dataset and create the demo accounts 'admin' and 'annotator'; "
                                   "their passwords are printed once, the first time.")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("retrain", help="retrain the reward model",
                       description="Train a reward model on the judgments, evaluate it on held-out human labels, "
                                   "promote it if it is not worse than the active one, and re-order the queue.")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--once", action="store_true",
                      help="one run if there are new judgments or pairs: train, evaluate, promote, rescore")
    mode.add_argument("--watch", action="store_true", help="run until stopped, retraining when due")
    p.add_argument("--force", action="store_true", help="with --once: retrain even with no new judgments")
    p.add_argument("--replace-missing", action="store_true",
                   help="with --once: an active model another host trained, whose files are not here (that host "
                        "is gone, the database restored on a new machine), is replaced instead of failing the run")
    p.add_argument("--poll-seconds", type=_poll_seconds, default=None, metavar="S",
                   help="with --watch: seconds between checks whether a retrain is due (default 5)")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("score", help="score (prompt, response) pairs with the active reward model",
                       description="Print a JSON object with reward and uncertainty for --prompt/--response, "
                                   "or one JSON line per line of --file.")
    p.add_argument("--prompt", help="the prompt text")
    p.add_argument("--response", help="the response text")
    p.add_argument("--file", help="JSONL with prompt and response fields")
    p.add_argument("--out", help="with --file: write the JSON lines here instead of standard output")
    p.add_argument("--model", help="artifact directory (default: the active model)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("simulate", help="replay labelled data to compare acquisition strategies")
    add_simulate_arguments(p)
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not sys.stderr.isatty():
        # A log file (the watcher's, Retrain now's, a script's) is no place for tqdm's "Loading weights"
        # or "Saving the dataset" bars; read when transformers/datasets are first imported, so set first.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        return args.func(args)
    except PrefloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, SystemRefused) else 2
    except OSError as exc:
        # A file or folder the system refused (a permission, a read-only or full disk): its reason, not a traceback.
        where = f": {exc.filename!r}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
