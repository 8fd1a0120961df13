"""Evaluation results stored inside the run they evaluate, reused while nothing they depend on changed.

Layout of a run folder::

    evals/<evaluator>-<protocol hash>/result.json   one evaluation (atomic JSON, below)
    evals/features-<feature hash>.pt                 cached features, shared by every evaluator and k/T

The protocol hash is the first 12 hex digits of sha256 over the protocol dict as canonical JSON (sorted keys);
a stored result is reused only while its protocol and the sha256 of ``checkpoint.pt`` (streamed) both match.
The feature file is keyed by the data settings, the feature protocol and that checkpoint hash, so another
k or T (a new result folder) reuses the features of the same checkpoint and data.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mixbench import __version__
from mixbench.results.atomic import atomic_torch_save, atomic_write_json

EVALS = "evals"
RESULT = "result.json"


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    """sha256 (hex) of a file's bytes, read in blocks of ``block`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def protocol_hash(protocol: dict[str, Any]) -> str:
    """First 12 hex digits of sha256(canonical JSON of ``protocol``)."""
    text = json.dumps(protocol, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def result_path(run_dir: Path, evaluator_name: str, protocol: dict[str, Any]) -> Path:
    """``<run dir>/evals/<evaluator>-<protocol hash>/result.json``."""
    return Path(run_dir) / EVALS / f"{evaluator_name}-{protocol_hash(protocol)}" / RESULT


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_or_run(run_dir: Path, evaluator_name: str, protocol: dict[str, Any],
                fn: Callable[[], dict[str, float]], force: bool = False,
                checkpoint_sha256: str | None = None) -> dict[str, Any]:
    """The stored result when its protocol and checkpoint hash match (and not ``force``), else ``fn()`` stored.

    Returns the result.json dict plus ``"reused"`` (True when read back; not written to the file) and ``"path"``.
    ``checkpoint_sha256`` saves hashing ``<run dir>/checkpoint.pt`` again when the caller already has it.
    """
    run_dir = Path(run_dir)
    sha = checkpoint_sha256 or file_sha256(run_dir / "checkpoint.pt")
    path = result_path(run_dir, evaluator_name, protocol)
    old = None if force else _read_json(path)
    canonical = json.loads(json.dumps(protocol, default=str))  # as it reads back from JSON
    if old and old.get("protocol") == canonical and old.get("checkpoint_sha256") == sha \
            and isinstance(old.get("metrics"), dict):
        return old | {"reused": True, "path": str(path)}
    start = time.perf_counter()
    metrics = fn()
    record = {"evaluator": evaluator_name, "protocol": canonical, "metrics": metrics, "checkpoint_sha256": sha,
              "seconds": round(time.perf_counter() - start, 3), "mixbench version": __version__,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(path, record)
    return record | {"reused": False, "path": str(path)}


def load_or_compute_features(run_dir: Path, key: dict[str, Any], fn: Callable[[], dict[str, Any]],
                             force: bool = False) -> tuple[dict[str, Any], bool]:
    """(tensors, reused): ``evals/features-<hash of key>.pt`` when its stored key matches, else ``fn()`` saved.

    ``key`` must name everything the features depend on (checkpoint hash, data settings, feature protocol);
    ``fn`` returns a dict of tensors, saved on the CPU and returned as computed.
    """
    import torch

    path = Path(run_dir) / EVALS / f"features-{protocol_hash(key)}.pt"
    canonical = json.loads(json.dumps(key, default=str))
    if not force and path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a foreign or damaged cache file is recomputed
            stored = None
        if isinstance(stored, dict) and stored.get("key") == json.dumps(canonical, sort_keys=True):
            return stored["tensors"], True
    tensors = fn()
    atomic_torch_save(path, {"key": json.dumps(canonical, sort_keys=True),
                             "tensors": {k: v.detach().cpu() for k, v in tensors.items()}})
    return tensors, False


__all__ = ["file_sha256", "protocol_hash", "result_path", "load_or_run", "load_or_compute_features"]
