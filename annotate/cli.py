"""The ``prefloop`` command line.

Every command reads settings from ``PREFLOOP_*`` variables. Errors a user can
cause print their message (no traceback) and exit with status 2.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from datetime import datetime
from pathlib import Path

from annotate.errors import ImportValidationError, PrefloopError
from annotate.simulate_options import add_arguments as add_simulate_arguments


def _settings():
    from annotate.settings import load_settings

    return load_settings()


def _db(settings):
    from annotate.db import open_database

    return open_database(settings)


def _read_password(args) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat: ") != password:
            raise PrefloopError("the passwords do not match")
    return password


def _operator_admin(session, username: str | None):
    """The admin an operator's CLI command acts as (for the audit log and role checks)."""
    from sqlalchemy import select

    from annotate.accounts import Actor
    from annotate.models import Role, User

    query = select(User).where(User.role == Role.admin, User.active.is_(True))
    if username:
        query = query.where(User.username == username)
    user = session.scalars(query.order_by(User.id)).first()
    if user is None:
        raise PrefloopError(f"no active admin {username!r}" if username else
                            "no active admin exists: create one with 'prefloop users add NAME --role admin'")
    return Actor(id=user.id, username=user.username, role=user.role)


# --- commands ---------------------------------------------------------------

def cmd_db(args) -> int:
    from annotate import migrate

    settings = _settings()
    url = settings.sqlalchemy_url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        if not args.revision:
            raise PrefloopError("say which revision to downgrade to, e.g. 'prefloop db downgrade base'")
        migrate.downgrade(url, args.revision)
    print(f"database at revision {', '.join(sorted(migrate.current_heads(url))) or 'base'}")
    return 0


def cmd_users(args) -> int:
    from annotate import accounts

    settings = _settings()
    db = _db(settings)
    with db.begin() as session:
        if args.action == "add":
            accounts.create_user(session, args.name, _read_password(args), args.role, system=True)
            print(f"created {args.role} {args.name!r}")
        elif args.action == "deactivate":
            accounts.set_active(session, args.name, False, system=True)
            print(f"deactivated {args.name!r}")
        elif args.action == "activate":
            accounts.set_active(session, args.name, True, system=True)
            print(f"activated {args.name!r}")
        elif args.action == "reset-password":
            accounts.reset_password(session, args.name, _read_password(args), system=True)
            print(f"password reset for {args.name!r}")
        elif args.action == "set-role":
            accounts.set_role(session, args.name, args.role, system=True)
            print(f"{args.name!r} is now {args.role}")
        elif args.action == "list":
            from sqlalchemy import select

            from annotate.models import User

            for user in session.scalars(select(User).order_by(User.username)):
                print(f"{user.username}\t{user.role.value}\t{'active' if user.active else 'inactive'}")
    return 0


def cmd_import(args) -> int:
    from annotate import ingest

    settings = _settings()
    db = _db(settings)
    try:
        with db.begin() as session:
            report = ingest.import_file(
                session, settings, Path(args.file), filename=Path(args.file).name, fmt=args.format,
                system=True, source_tag=args.tag, known_winner=args.known_winner, overlap=args.overlap)
    except ImportValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        listing = ingest.problems_message(exc.problems)
        if exc.problems and listing.split(";")[0] not in str(exc):
            # A file-level error (e.g. no row had a known format) with row problems behind it.
            print(listing.split("\n", 1)[1], file=sys.stderr)
        print("nothing was imported.", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def _export_filter(args):
    from annotate.export import ExportFilter

    def when(value):
        return datetime.fromisoformat(value) if value else None

    return ExportFilter(
        since=when(args.since), until=when(args.until), annotators=tuple(args.annotator or ()),
        source_tags=tuple(args.tag or ()), include_ties=args.include_ties,
        include_both_bad=args.include_both_bad, exclude_gold=args.exclude_gold,
        min_agreement=args.min_agreement)


def cmd_export(args) -> int:
    from annotate import export

    settings = _settings()
    db = _db(settings)
    filters = _export_filter(args)
    out = Path(args.out)
    with db.begin() as session:
        actor = _operator_admin(session, args.as_admin)
        if args.format in ("trl-jsonl", "trl-parquet", "datasets"):
            kind = {"trl-jsonl": "jsonl", "trl-parquet": "parquet", "datasets": "datasets"}[args.format]
            n = export.write_preferences(session, out, actor=actor, format=kind, filters=filters, margin=args.margin)
        else:
            kind = {"judgments-csv": "csv", "judgments-jsonl": "jsonl",
                    "judgments-parquet": "parquet"}[args.format]
            n = export.write_judgments(session, out, actor=actor, format=kind, filters=filters)
    print(f"wrote {n} rows to {out}")
    return 0


def cmd_demo(args) -> int:
    from annotate import demo

    settings = _settings()
    db = _db(settings)
    demo.load_demo(db, settings, print_credentials=True)
    return 0


def cmd_retrain(args) -> int:
    if not sys.stderr.isatty():
        # A log file (the watcher's, Retrain now's) is no place for tqdm's "Loading weights" bars;
        # read when transformers is first imported, so set before the job imports it.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from annotate import retrain

    settings = _settings()
    if args.watch:
        retrain.watch(settings)
        return 0
    result = retrain.run_once(settings, force=args.force)
    print(result.summary())
    return 0 if result.status in ("succeeded", "rejected", "skipped") else 1


def cmd_score(args) -> int:
    from annotate import scoring

    settings = _settings()
    if args.file:
        rows = scoring.score_file(settings, Path(args.file), model_path=args.model)
        out = sys.stdout if not args.out else open(args.out, "w", encoding="utf-8")
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        if args.out:
            out.close()
        return 0
    if args.prompt is None or args.response is None:
        raise PrefloopError("give --prompt and --response, or --file in.jsonl")
    (row,) = scoring.score_texts(settings, [args.prompt], [args.response], model_path=args.model)
    print(json.dumps(row, ensure_ascii=False))
    return 0


def cmd_simulate(args) -> int:
    from annotate import simulate

    return simulate.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefloop", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("db", help="apply or revert database migrations")
    p.add_argument("action", choices=["upgrade", "downgrade"])
    p.add_argument("revision", nargs="?")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("users", help="manage local accounts")
    p.add_argument("action", choices=["add", "deactivate", "activate", "reset-password", "set-role", "list"])
    p.add_argument("name", nargs="?")
    p.add_argument("--role", choices=["admin", "annotator"], default="annotator")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("import", help="import prompts, responses and comparisons")
    p.add_argument("file")
    p.add_argument("--format", choices=["pairs", "kwise", "trl", "hh"], help="default: detect")
    p.add_argument("--tag", help="source tag for everything in the file")
    p.add_argument("--known-winner", choices=["judgment", "gold", "ignore"], default="judgment",
                   help="what a known winner becomes (default: an imported judgment)")
    p.add_argument("--overlap", type=int, help="judgments each comparison needs (default: PREFLOOP_OVERLAP)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export preferences (TRL) or raw judgments")
    p.add_argument("--format", required=True,
                   choices=["trl-jsonl", "trl-parquet", "datasets", "judgments-csv", "judgments-jsonl",
                            "judgments-parquet"])
    p.add_argument("--out", required=True)
    p.add_argument("--since", help="ISO date/time (UTC if naive): only votes cast at or after it")
    p.add_argument("--until", help="ISO date/time (UTC if naive), exclusive: preferences as the votes stood "
                                   "just before it (revisions and undos made later are not applied)")
    p.add_argument("--annotator", action="append")
    p.add_argument("--tag", action="append")
    p.add_argument("--include-ties", action="store_true")
    p.add_argument("--include-both-bad", action="store_true")
    p.add_argument("--exclude-gold", action="store_true")
    p.add_argument("--min-agreement", type=float, default=0.0)
    p.add_argument("--margin", action="store_true", help="add a margin column from strength")
    p.add_argument("--as-admin", help="admin to record in the audit log (default: the first admin)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="load the demo dataset and demo accounts")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("retrain", help="retrain the reward model")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--once", action="store_true")
    mode.add_argument("--watch", action="store_true")
    p.add_argument("--force", action="store_true", help="retrain even with no new judgments")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("score", help="score (prompt, response) pairs with the active reward model")
    p.add_argument("--prompt"), p.add_argument("--response")
    p.add_argument("--file", help="JSONL with prompt and response fields")
    p.add_argument("--out")
    p.add_argument("--model", help="artifact directory (default: the active model)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("simulate", help="replay labelled data to compare acquisition strategies")
    add_simulate_arguments(p)
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PrefloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
