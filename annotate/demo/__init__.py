"""The demo campaign behind ``make run``: a small hand-written dataset and two accounts.

The dataset (``demo.jsonl``, k-wise format: every pair of a prompt's three
responses becomes a comparison) was written for this project. Its 18 prompts
give 54 pairs. The campaign's defaults (retrain every 50 new labels, random
order for the first 64) would show one model at best and never an ordered
queue, so a new demo campaign sets ``DEMO_OPTIONS``: the loop turns three times
while one annotator works through it.
"""

from __future__ import annotations

import hashlib
import secrets
from importlib import resources

from sqlalchemy import select

from annotate import accounts, campaign, ingest
from annotate.models import AppSetting, ImportBatch, User

DEMO_USERS = (("admin", "admin"), ("annotator", "annotator"))
# A model after 16 labels, the queue in the strategy's order from then on, in batches of 8.
DEMO_OPTIONS = {"retrain_every_labels": 16, "cold_start": 16, "batch_size": 8}


def demo_file_bytes() -> bytes:
    return resources.files("annotate").joinpath("demo/demo.jsonl").read_bytes()


def load_demo(db, settings, *, print_credentials: bool = False) -> dict[str, str]:
    """Import the demo data (idempotent) and create the demo accounts if missing.

    Returns the passwords of accounts created now (each printed once when asked).
    """
    data = demo_file_bytes()
    with db.begin() as session:
        # Imported before (make run, every start): not again, which added nothing but an empty import batch to
        # the Audit log at each start.
        before = session.scalar(select(ImportBatch.id).where(ImportBatch.file_hash == hashlib.sha256(data).hexdigest())
                                .order_by(ImportBatch.id).limit(1))
        report = None if before is not None else ingest.import_file(
            session, settings, data, filename="demo.jsonl", system=True, source_tag="demo")
        # Only for a new demo campaign: run again, the demo leaves an admin's own choices alone.
        if report is not None and report.comparisons_added and not session.scalar(select(AppSetting.key).limit(1)):
            campaign.update_options(session, settings, actor=None, system=True, **DEMO_OPTIONS)
    created: dict[str, str] = {}
    with db.begin() as session:
        for username, role in DEMO_USERS:
            if session.scalar(select(User.id).where(User.username == username)) is None:
                password = secrets.token_urlsafe(9)
                accounts.create_user(session, username, password, role, system=True)
                created[username] = password
    if print_credentials:
        print(f"demo data: {report.summary()}" if report is not None
              else f"demo data: already imported (batch {before}); nothing added")
        if created:
            print("demo accounts (shown once; reset with 'prefloop users reset-password NAME'):")
            for username, password in created.items():
                print(f"  {username:<10} password: {password}")
        else:
            print("demo accounts already exist (reset with 'prefloop users reset-password NAME').")
    return created
