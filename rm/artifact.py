"""Self-describing reward-model artifacts, written atomically.

An artifact is a directory::

    manifest.json        format name + version, created time, encoder (id, path,
                         options, dim), feature spec, head shapes and temperature,
                         metrics, data counts, and size + sha256 of every other file
    heads.safetensors    mean, scale, w, b (and w1, b1 for MLP heads)

``save_artifact`` writes everything into a temporary sibling directory, fsyncs
and renames it into place, so no reader ever sees a half-written artifact
under the final name. ``load_artifact`` verifies the manifest, file sizes and
hashes and array shapes, and raises ``ArtifactError`` saying what is wrong.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rm.features import FeatureSpec
from rm.heads import Ensemble

FORMAT_NAME = "prefloop-reward-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
HEADS_FILE = "heads.safetensors"


class ArtifactError(RuntimeError):
    """A reward-model artifact is missing, corrupt or incompatible; the message says what to do."""


@dataclass
class ArtifactInfo:
    """What ``load_artifact`` read besides the heads (the parsed manifest)."""

    path: Path
    manifest: dict
    features: FeatureSpec
    encoder: dict = field(default_factory=dict)

    @property
    def encoder_id(self) -> str:
        return self.encoder.get("encoder_id", "")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_artifact(path: str | os.PathLike, ensemble: Ensemble, *, encoder: dict, features: FeatureSpec,
                  metrics: dict | None = None, data_counts: dict | None = None, extra: dict | None = None,
                  overwrite: bool = False) -> Path:
    """Write an artifact directory at ``path`` atomically; returns the path.

    Args:
        encoder: ``Encoder.describe()`` (must hold ``encoder_id``, ``model_path``, ``dim``).
        features: The ``FeatureSpec`` the heads were trained on.
        metrics: Held-out metrics (e.g. ``Metrics.to_dict()``); NaN and inf are stored as null.
        data_counts: Snapshot counts (judgments, pairs, prompts…).
        overwrite: Replace an existing artifact (the old one is moved aside, then deleted).
    """
    from safetensors.numpy import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise ArtifactError(f"{path} already exists; choose a new version directory or pass overwrite=True")
    if "encoder_id" not in encoder:
        raise ArtifactError("encoder description lacks 'encoder_id'; pass Encoder.describe()")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tensors = {"mean": ensemble.mean, "scale": ensemble.scale, **ensemble.params}
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
                  str(tmp / HEADS_FILE))
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "encoder": encoder,
            "features": features.to_dict(),
            "heads": {"n_members": ensemble.n_members, "dim": ensemble.dim, "hidden": ensemble.hidden,
                      "temperature": float(ensemble.temperature), "info": _finite(ensemble.info)},
            "metrics": _finite(metrics or {}),
            "data_counts": _finite(data_counts or {}),
            "extra": _finite(extra or {}),
            "files": {HEADS_FILE: {"size": (tmp / HEADS_FILE).stat().st_size,
                                   "sha256": _sha256(tmp / HEADS_FILE)}},
        }
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False, default=_json_default)
        with open(tmp / MANIFEST, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / HEADS_FILE, "rb") as f:
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if path.exists():
            aside = path.parent / f".old-{path.name}-{uuid.uuid4().hex[:8]}"
            os.replace(path, aside)
            os.replace(tmp, path)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _finite(obj):
    """Copy of ``obj`` with NaN/inf floats as None: held-out figures are NaN when
    undefined (no decisive pairs, constant lengths), and JSON has no NaN."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _fail(path: Path, what: str, todo: str = "retrain the model or restore this artifact from a backup"):
    raise ArtifactError(f"reward-model artifact {path}: {what}; {todo}.")


def read_manifest(path: str | os.PathLike) -> dict:
    """Parse and check ``manifest.json`` (format and version) without loading weights."""
    path = Path(path)
    if not path.is_dir():
        _fail(path, "no such directory", "check the model path or train a model first")
    mf = path / MANIFEST
    if not mf.is_file():
        _fail(path, f"{MANIFEST} is missing (incomplete or not an artifact)")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        _fail(path, f"{MANIFEST} is not valid JSON ({exc})")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        _fail(path, f"{MANIFEST} does not describe a {FORMAT_NAME} artifact")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        _fail(path, f"format version {version!r} is not supported by this prefloop (reads 1..{FORMAT_VERSION})",
              "upgrade prefloop or retrain the model with this version")
    for key in ("encoder", "features", "heads", "files"):
        if not isinstance(manifest.get(key), dict):
            _fail(path, f"{MANIFEST} lacks the '{key}' section")
    return manifest


def load_artifact(path: str | os.PathLike, *, expected_encoder_id: str | None = None) -> tuple[Ensemble, ArtifactInfo]:
    """Load and verify an artifact: ``(Ensemble, ArtifactInfo)``.

    Raises ``ArtifactError`` for a missing, truncated or corrupt artifact, an
    unsupported format version, or (when ``expected_encoder_id`` is given) an
    artifact trained on a different encoder.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    manifest = read_manifest(path)
    for name, desc in manifest["files"].items():
        f = path / name
        if not f.is_file():
            _fail(path, f"file {name} is missing")
        if f.stat().st_size != desc.get("size") or _sha256(f) != desc.get("sha256"):
            _fail(path, f"file {name} is truncated or corrupt (size/hash differ from the manifest)")
    if HEADS_FILE not in manifest["files"]:
        _fail(path, f"the manifest lists no {HEADS_FILE}")
    try:
        t = load_file(str(path / HEADS_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        _fail(path, f"{HEADS_FILE} cannot be read ({exc})")

    heads, enc = manifest["heads"], manifest["encoder"]
    try:
        features = FeatureSpec.from_dict(manifest["features"])
        m, d, hidden = int(heads["n_members"]), int(heads["dim"]), int(heads["hidden"])
        enc_dim = int(enc["dim"])
    except (KeyError, TypeError, ValueError) as exc:
        _fail(path, f"the manifest is incomplete ({exc!r})")
    expected = {"mean": (d,), "scale": (d,), "b": (m,), "w": (m, hidden if hidden else d)}
    if hidden:
        expected.update({"w1": (m, d, hidden), "b1": (m, hidden)})
    if features.dim(enc_dim) != d:
        _fail(path, f"head input size {d} does not match features {features.parts} of a {enc_dim}-dim encoder")
    for name, shape in expected.items():
        if name not in t:
            _fail(path, f"{HEADS_FILE} lacks tensor '{name}'")
        if tuple(t[name].shape) != shape:
            _fail(path, f"tensor '{name}' has shape {tuple(t[name].shape)}, expected {shape}")
    if expected_encoder_id is not None and enc.get("encoder_id") != expected_encoder_id:
        _fail(path, f"it was trained on encoder {enc.get('encoder_id')!r} but {expected_encoder_id!r} is in use",
              "score with the encoder it was trained on (see manifest.json 'encoder') or retrain")
    params = {k: v for k, v in t.items() if k not in ("mean", "scale")}
    ens = Ensemble(mean=t["mean"], scale=t["scale"], params=params,
                   temperature=float(heads.get("temperature", 1.0)), info=heads.get("info", {}))
    return ens, ArtifactInfo(path=path, manifest=manifest, features=features, encoder=enc)
