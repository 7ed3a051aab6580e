"""Small factories for service tests (ORM rows, no importer needed)."""

from __future__ import annotations

import hashlib

from annotate.accounts import Actor, create_user
from annotate.models import Comparison, Prompt, Response, Role

PASSWORD = "correct-horse-1"


def h(*parts) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


def make_user(session, name: str, role: str = "annotator") -> Actor:
    user = create_user(session, name, PASSWORD, role, system=True)
    return Actor(id=user.id, username=user.username, role=Role(role))


def make_comparisons(session, n: int, *, overlap: int = 1, gold: bool = False, tag: str | None = None,
                     chat: bool = False, start: int = 0, priority=None) -> list[int]:
    """Create ``n`` prompts, each with two responses and one comparison."""
    ids = []
    for i in range(start, start + n):
        if chat:
            prompt = Prompt(content_hash=h("p", i, tag), messages=[
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": "Could you say more?"},
                {"role": "user", "content": f"Details for {i}."}], source_tag=tag)
        else:
            prompt = Prompt(content_hash=h("p", i, tag), text=f"Prompt number {i}: explain something.", source_tag=tag)
        session.add(prompt)
        session.flush()
        a = Response(prompt_id=prompt.id, content_hash=h("a", i), text=f"Answer A to {i}, short.")
        b = Response(prompt_id=prompt.id, content_hash=h("b", i), text=f"Answer B to {i}, which is a little longer.")
        session.add_all([a, b])
        session.flush()
        c = Comparison(prompt_id=prompt.id, response_a_id=a.id, response_b_id=b.id, overlap_target=overlap,
                       is_gold=gold, gold_choice="a" if gold else None, source_tag=tag,
                       priority=float(priority(i)) if priority else ((i * 7919) % 1000) / 1000.0)
        session.add(c)
        session.flush()
        ids.append(c.id)
    return ids
