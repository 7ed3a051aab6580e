"""From (prompt, response) to one feature vector per response.

A prompt is a plain string or a list of chat messages
``[{"role": "user"|"assistant"|"system", "content": str}]``; ``render_prompt``
turns it into text in the ``\\n\\nHuman: … \\n\\nAssistant: …`` transcript form
(the form of the HH-RLHF data); a plain string is the chat of one user turn, unless it
already is such a transcript. The encoder truncates prompts from the left, so
the last turns, where the responses differ, are kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence, Union

import numpy as np

Prompt = Union[str, Sequence[dict]]

_ROLE_NAMES = {"user": "Human", "human": "Human", "assistant": "Assistant", "system": "System"}
FEATURE_PARTS = ("joint", "response", "prompt", "prompt_x_response")


_RENDERED = tuple(f"\n\n{name}:" for name in ("Human", "Assistant", "System"))


def as_chat(prompt: Prompt) -> Prompt:
    """A text prompt as the chat of one user turn it is (``[{"role": "user", "content": text}]``); a chat as it is.

    An import takes a text prompt and that one-turn chat as one prompt, so the model must see them alike, in
    the transcript form of the chats it learns from (HH-RLHF's "\\n\\nHuman: ..."): :func:`render_prompt`
    applies it, so training and scoring, in the app and through this library, agree. The two forms got two rewards before (-0.598 and -0.498 for "How do I boil an egg?"). A string that
    already is a transcript (starting ``\\n\\nHuman:``, ``\\n\\nAssistant:`` or ``\\n\\nSystem:``, as HH-RLHF's
    prompts do) is left as it is."""
    if isinstance(prompt, str) and not prompt.startswith(_RENDERED):
        return [{"role": "user", "content": prompt}]
    return prompt  # a chat, or a transcript already rendered (HH-RLHF's own strings)


def render_prompt(prompt: Prompt) -> str:
    """Text of a prompt: chat messages as a ``Human:/Assistant:`` transcript, a text prompt as the chat of one
    user turn it is (:func:`as_chat`), a string that already is a transcript unchanged."""
    prompt = as_chat(prompt)
    if isinstance(prompt, str):
        return prompt
    out = []
    for i, msg in enumerate(prompt):
        try:
            role, content = msg["role"], msg["content"]
        except (TypeError, KeyError):
            raise ValueError(f"chat message {i} must be a dict with 'role' and 'content'; got {msg!r}") from None
        name = _ROLE_NAMES.get(str(role).lower())
        if name is None:
            raise ValueError(f"chat message {i} has unknown role {role!r}; use user, assistant or system")
        out.append(f"\n\n{name}: {content}")
    return "".join(out)


@dataclass(frozen=True)
class FeatureSpec:
    """Which embeddings make up a response's feature vector (concatenated in order).

    Attributes:
        parts: Any of ``"joint"`` (embedding of ``prompt-tail [SEP] response``),
            ``"response"`` (the response alone), ``"prompt"`` (the prompt alone,
            left-truncated; it cancels out in a linear head, useful only with an MLP)
            and ``"prompt_x_response"`` (elementwise product of the two, a
            prompt–response interaction that survives in a linear head).
    """

    parts: tuple[str, ...] = ("joint", "response")

    def __post_init__(self):
        bad = [p for p in self.parts if p not in FEATURE_PARTS]
        if bad or not self.parts:
            raise ValueError(f"unknown feature parts {bad}; choose from {FEATURE_PARTS}")

    def dim(self, encoder_dim: int) -> int:
        """Feature length for an encoder of ``encoder_dim``."""
        return encoder_dim * len(self.parts)

    def to_dict(self) -> dict:
        return {"parts": list(self.parts)}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(parts=tuple(d["parts"]))


def build_features(prompts: Sequence[Prompt], responses: Sequence[str], embedder,
                   spec: FeatureSpec | None = None) -> np.ndarray:
    """Feature matrix float32 ``(n, spec.dim(d))`` for n (prompt, response) rows.

    ``embedder`` is an ``EmbeddingCache`` (preferred: each text embedded once,
    ever) or an ``Encoder``; both offer ``embed``/``encode`` and pair variants.
    Prompts shared by many responses are embedded once.
    """
    spec = spec or FeatureSpec()
    if len(prompts) != len(responses):
        raise ValueError("prompts and responses must have the same length")
    texts = [render_prompt(p) for p in prompts]
    responses = [str(r) for r in responses]
    embed = getattr(embedder, "embed", None) or embedder.encode
    embed_pairs = getattr(embedder, "embed_pairs", None) or embedder.encode_pairs
    cols: dict[str, np.ndarray] = {}

    def prompt_vecs():
        uniq, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        return embed(list(uniq), keep="end")[inverse]

    for part in spec.parts:
        if part in cols:
            continue
        if part == "joint":
            cols[part] = embed_pairs(texts, responses)
        elif part == "response":
            cols[part] = embed(responses)
        elif part == "prompt":
            cols[part] = prompt_vecs()
        elif part == "prompt_x_response":
            p = cols.get("prompt")
            p = prompt_vecs() if p is None else p
            r = cols.get("response")
            r = embed(responses) if r is None else r
            cols[part] = p * r
    return np.concatenate([cols[p] for p in spec.parts], axis=1).astype(np.float32, copy=False)
