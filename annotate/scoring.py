"""Scoring (prompt, response) rows with the active reward model.

The active model is whatever ``model_versions`` says now; a loaded model is
cached per artifact path (one path per version), so a process picks up a newly
promoted model at its next call without a restart. The UI caches by model
version id with ``st.cache_resource`` (``annotate/ui/pages/models.py``).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from annotate import quality
from annotate.errors import ModelError, PrefloopError
from annotate.models import ModelVersion
from annotate.settings import Settings

NO_MODEL = "no reward model has been trained yet: collect some judgments, then run 'prefloop retrain --once'"
SCORE_ROWS = 4096
"""Rows featurised and scored at a time, so scoring a large file keeps memory bounded by its results."""
_MAX_LOADED = 4
_loaded: OrderedDict[tuple, object] = OrderedDict()
_loaded_lock = threading.Lock()


def active_model(session: Session) -> ModelVersion | None:
    """The active model version, or None before the first promotion."""
    return session.scalar(select(ModelVersion).where(ModelVersion.is_active))


def list_versions(session: Session, limit: int = 50) -> list[ModelVersion]:
    """Model versions, newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(limit)))


def artifact_location(settings: Settings, stored: str) -> Path:
    """Where a ``model_versions.artifact_path`` lies: relative paths are under ``data_dir``."""
    p = Path(stored)
    return p if p.is_absolute() else settings.data_dir / p


def load_model(settings: Settings, path: str | Path):
    """Load (once per process, kept in a small LRU) the ``rm`` reward model at ``path``.

    Raises :class:`ModelError` for a missing, corrupt or incompatible artifact.
    """
    from rm.artifact import ArtifactError
    from rm.model import load

    key = (str(Path(path).resolve()), str(settings.cache_dir.resolve()), settings.resolved_encoder_path)
    with _loaded_lock:
        if key in _loaded:
            _loaded.move_to_end(key)
            return _loaded[key]
    try:
        model = load(path, cache_dir=settings.cache_dir)
        recorded = model.info.encoder.get("model_path")
        if recorded and not (Path(recorded) / "config.json").is_file() and settings.resolved_encoder_path:
            # Trained on another machine: use this machine's copy of the encoder (its id is checked).
            model = load(path, cache_dir=settings.cache_dir, encoder=settings.resolved_encoder_path)
    except ArtifactError as exc:
        raise ModelError(str(exc)) from None
    with _loaded_lock:
        _loaded[key] = model
        while len(_loaded) > _MAX_LOADED:
            _loaded.popitem(last=False)
    return model


def _resolve(settings: Settings, model_path: str | Path | None) -> tuple[Path, int | None]:
    if model_path is not None:
        return Path(model_path), None
    from annotate.db import open_database

    db = open_database(settings, null_pool=True)
    try:
        with db.read() as session:
            version = active_model(session)
            if version is None:
                raise ModelError(NO_MODEL)
            location = artifact_location(settings, version.artifact_path)
            if not location.exists():
                raise ModelError(missing_artifact_message(session, version.id, location))
            return location, version.id
    finally:
        db.dispose()


def artifact_elsewhere(version_id: int, trained_on: str | None, location: Path) -> str:
    """Why the active model's artifact is not at ``location``: it may live on another machine."""
    return (f"the active reward model (version {version_id}{f', trained on host {trained_on}' if trained_on else ''}) "
            f"is not at {location}: every machine that shares this database must see the same model "
            "artifacts, so put PREFLOOP_DATA_DIR (or its models/ folder) on storage shared by all of them")


def missing_artifact_message(session: Session, version_id: int, location: Path) -> str:
    """:func:`artifact_elsewhere` for a scorer, with the host read from the version's training run."""
    from annotate.models import TrainingRun

    host = session.scalar(select(TrainingRun.host).join(ModelVersion, ModelVersion.training_run_id == TrainingRun.id)
                          .where(ModelVersion.id == version_id))
    return (f"{artifact_elsewhere(version_id, host, location)}; "
            "if the artifact was deleted, run 'prefloop retrain --once --force'")


def empty_text(prompt, response) -> str | None:
    """What is empty in a (prompt, response) to score, or None: an empty text still gets a reward, which
    means nothing. Blank (whitespace only) text is empty, and so is a chat with no message that has text.

    The one check of the admin page's "Score a response" and of ``prefloop score`` (via :func:`row_problem`).
    """
    def blank(value) -> bool:
        if isinstance(value, str):
            return not value.strip()
        if isinstance(value, list):
            return all(isinstance(m, dict) and isinstance(m.get("content"), str) and not m["content"].strip()
                       for m in value)
        return False

    empty = [name for name, value in (("prompt", prompt), ("response", response)) if blank(value)]
    if not empty:
        return None
    return "the prompt and the response are empty" if len(empty) == 2 else f"the {empty[0]} is empty"


def row_problem(prompt, response, *, allow_empty_response: bool = False) -> str | None:
    """Why one (prompt, response) cannot be scored, or None.

    A prompt is text or a list of chat messages (each a dict with a user, assistant or system
    ``role`` and a ``content``) and a response is text; neither may be empty (:func:`empty_text`), but for
    an empty response where ``allow_empty_response`` (a file of a policy's samples, some of which said nothing:
    imports keep such responses and the model trains on them).
    """
    from rm.features import render_prompt

    if not isinstance(prompt, (str, list)):
        return f"the prompt must be text or a list of chat messages, not {type(prompt).__name__}"
    if not isinstance(response, str):
        return f"the response must be text, not {type(response).__name__}"
    if isinstance(prompt, list):
        try:
            render_prompt(prompt)
        except ValueError as exc:  # a message that is not a dict, or an unknown role
            return str(exc)
    empty = empty_text(prompt, "x" if allow_empty_response else response)
    return None if empty is None else f"{empty} (an empty text would get a reward that means nothing)"


def _check_rows(prompts: list, responses: list, allow_empty_response: bool = False) -> None:
    if len(prompts) != len(responses):
        raise PrefloopError("give as many prompts as responses")
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        problem = row_problem(prompt, response, allow_empty_response=allow_empty_response)
        if problem is not None:
            raise PrefloopError(f"cannot score row {i}: {problem}")


def score_with(model, prompts: Sequence, responses: Sequence[str], *,
               allow_empty_response: bool = False) -> list[dict]:
    """Score rows with a loaded model: ``[{"reward", "uncertainty"}]`` per row.

    A row that :func:`row_problem` refuses (not text, empty, a malformed chat) is
    refused naming the row rather than scored (as its ``str()``, say). Rows are
    scored :data:`SCORE_ROWS` at a time, so features never exist for all rows at once.
    """
    from rm.artifact import ArtifactError
    from rm.encoder import EncoderError

    prompts, responses = list(prompts), list(responses)
    _check_rows(prompts, responses, allow_empty_response)
    rows: list[dict] = []
    for start in range(0, len(prompts), SCORE_ROWS):
        try:
            scores = model.score(prompts[start:start + SCORE_ROWS], responses[start:start + SCORE_ROWS])
        except (ArtifactError, EncoderError) as exc:
            raise ModelError(str(exc)) from None
        except ValueError as exc:  # what row_problem does not foresee
            raise PrefloopError(f"cannot score: {exc}") from None
        rows.extend({"reward": float(r), "uncertainty": float(u)}
                    for r, u in zip(scores.reward.tolist(), scores.uncertainty.tolist()))
    return rows


def score_texts(settings: Settings, prompts: Sequence, responses: Sequence[str],
                model_path: str | Path | None = None, *, allow_empty_response: bool = False) -> list[dict]:
    """Score (prompt, response) rows with the active model (or the artifact at ``model_path``).

    A prompt is a string or a list of chat messages. Each row gives ``reward``
    (ensemble mean), ``uncertainty`` (member spread), ``model_version_id`` and
    ``model_path``.
    """
    prompts, responses = list(prompts), list(responses)
    _check_rows(prompts, responses, allow_empty_response)  # before the model loads: a bad row is named at once
    path, version_id = _resolve(settings, model_path)
    rows = score_with(load_model(settings, path), prompts, responses, allow_empty_response=allow_empty_response)
    for row in rows:
        row["model_version_id"] = version_id
        row["model_path"] = str(path)
    return rows


SHOWN_PROBLEMS = 20
"""How many bad lines of a file to score :func:`score_file` names (it counts the rest)."""


def score_file(settings: Settings, path: Path, model_path: str | Path | None = None) -> list[dict]:
    """Score every line of a JSONL file with ``prompt`` and ``response`` fields.

    Returns each input object with ``reward``, ``uncertainty``,
    ``model_version_id`` and ``model_path`` added. Bad lines raise
    :class:`PrefloopError` naming the first :data:`SHOWN_PROBLEMS` (``FILE:LINE: why``) and counting
    the rest; nothing is scored then. Lines are read as ``prefloop import`` reads JSON (a key repeated
    in one object, NaN or Infinity is refused), and each row is checked by :func:`row_problem`
    (an empty prompt, an unknown chat role) before the model loads. An empty response is scored: a
    policy's sample that said nothing needs a reward too, and imports keep such responses to train on.
    """
    from annotate.ingest import _BadJSON, _loads  # import's strict reader: a repeated key is an error

    path = Path(path)
    if path.is_dir():
        raise PrefloopError(f"{path} is a folder: give a JSONL file")
    if not path.is_file():
        raise PrefloopError(f"{path} does not exist")
    records: list[dict] = []
    problems: list[str] = []
    n_problems = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            problem = None
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark is not JSON
            except UnicodeDecodeError:
                line, problem = "", "not UTF-8 text (a JSONL file is UTF-8)"
            if problem is None and not line.strip():
                continue
            if problem is None:
                try:
                    obj = _loads(line)
                except (json.JSONDecodeError, _BadJSON) as exc:
                    problem = f"not valid JSON ({exc.msg})"
            if problem is None and (not isinstance(obj, dict) or "prompt" not in obj or "response" not in obj):
                problem = "each line needs 'prompt' and 'response' fields"
            if problem is None and (not isinstance(obj["response"], str) or not isinstance(obj["prompt"], (str, list))):
                problem = "'prompt' must be text or chat messages and 'response' text"
            if problem is None:
                problem = row_problem(obj["prompt"], obj["response"], allow_empty_response=True)
            if problem is None:
                records.append(obj)
                continue
            n_problems += 1
            if len(problems) < SHOWN_PROBLEMS:
                problems.append(f"{path}:{lineno}: {problem}")
    if problems:
        more = n_problems - len(problems)
        head = problems[0] if n_problems == 1 else f"{path}: {n_problems:,} bad lines, nothing scored"
        raise PrefloopError("\n".join([head, *(problems if n_problems > 1 else []),
                                       *([f"... and {more:,} more"] if more else [])]))
    scores = score_texts(settings, [r["prompt"] for r in records], [r["response"] for r in records],
                         model_path=model_path, allow_empty_response=True)
    return [{**rec, **sc} for rec, sc in zip(records, scores)]


def _version_row(v: ModelVersion) -> dict:
    m = v.metrics or {}
    return {
        "id": v.id, "active": v.is_active, "promoted": v.promoted, "created_at": v.created_at,
        "promoted_at": v.promoted_at, "n_train": v.n_train, "n_test": v.n_test,
        "accuracy": m.get("accuracy"), "log_loss": m.get("log_loss"), "ece": m.get("ece"),
        "length_baseline": m.get("length_baseline_accuracy"),
        "length_rule": quality.length_rule(m.get("length_longer_wins_accuracy")),
        "reward_length_spearman": m.get("reward_length_spearman"),
        "ensemble_prob_std": m.get("ensemble_prob_std"), "gate": m.get("gate"),
        "n_held_out_decisive": m.get("n_held_out_decisive"), "n_decisive": m.get("n_decisive"),
        "gate_compared_with": m.get("gate_compared_with"),
        "encoder_id": v.encoder_id, "artifact_path": v.artifact_path, "training_run_id": v.training_run_id,
    }


def _run_row(r) -> dict:
    end = r.finished_at
    return {
        "id": r.id, "status": r.status, "step": r.step, "started_at": r.started_at, "finished_at": end,
        "seconds": round((end - r.started_at).total_seconds(), 2) if end and r.started_at else None,
        "error": r.error, "host": r.host, "pid": r.pid,
        "timings": ", ".join(f"{k} {v:.2f}s" for k, v in (r.timings or {}).items()),
        "counts": ", ".join(f"{k}={v}" for k, v in (r.counts or {}).items()),
    }


def dashboard(session: Session, *, actor, limit: int = 20) -> dict:
    """Admin view of the reward model: ``{"active", "versions", "runs"}`` as plain dicts.

    ``versions`` and ``runs`` are newest first; ``active`` is the active
    version's row or None.
    """
    from annotate.accounts import require_admin
    from annotate.models import TrainingRun

    require_admin(session, actor)
    versions = [_version_row(v) for v in list_versions(session, limit)]
    active = active_model(session)
    runs = [_run_row(r) for r in session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit))]
    return {"active": _version_row(active) if active else None, "versions": versions, "runs": runs}
