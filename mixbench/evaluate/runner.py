"""What the evaluation commands (``mixbench knn``, ``linear-eval``, ``evaluate``) share: a checkpoint's
frozen encoder applied once to its data set, the features cached in the run folder, the robustness
evaluators of its reported classifier, and the stored result of each evaluation
(see :mod:`mixbench.evaluate.store`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mixbench.checkpoint import Checkpoint, read_checkpoint
from mixbench.errors import UserError
from mixbench.evaluate.features import FEATURES_PROTOCOL, data_table, eval_data, extract_features
from mixbench.evaluate.store import file_sha256, load_or_compute_features, load_or_run

DATA_KEYS = ("source", "root", "image_size", "train_size", "test_size", "seed")


def data_overrides(sets: list[str], command: str) -> dict[str, Any]:
    """``--set data.key=VALUE`` options as a ``[data]`` override table; other tables are refused."""
    from mixbench.recipe import parse_override

    out: dict[str, Any] = {}
    for text in sets:
        keys, value = parse_override(text)
        if len(keys) != 2 or keys[0] != "data":
            raise UserError(f"--set {text}: {command} takes only data settings, e.g. --set data.root=/data/cifar")
        out[keys[1]] = value
    return out


def _state_hash(module: torch.nn.Module) -> int:
    return hash(tuple((k, v.detach().cpu().numpy().tobytes()) for k, v in module.state_dict().items()))


@dataclass
class Encoded:
    """A checkpoint opened for evaluation; ``features()`` encodes its data once (cached in the run folder)."""

    ckpt: Checkpoint
    device: torch.device
    overrides: dict[str, Any]
    batch: int
    force: bool
    sha: str = ""
    data_key: dict[str, Any] = field(default_factory=dict)
    features_reused: bool = False

    @property
    def run_dir(self) -> Path:
        return self.ckpt.path.parent

    def features(self) -> dict[str, torch.Tensor]:
        """train_f, train_y, test_f, test_y, num_classes on the device: pooled features of the frozen encoder."""
        key = {"checkpoint_sha256": self.sha, "data": self.data_key, "normalization": self.ckpt.normalization,
               "features": FEATURES_PROTOCOL}
        f, self.features_reused = load_or_compute_features(self.run_dir, key, self._extract, force=self.force)
        return {name: v.to(self.device) for name, v in f.items()}

    def _extract(self) -> dict[str, torch.Tensor]:
        data = eval_data(self.ckpt, data_overrides=self.overrides, device=self.device)
        backbone = self.ckpt.build_backbone().to(self.device)
        before = _state_hash(backbone)
        kw = {"batch": self.batch, "device": self.device}
        out = {"train_f": extract_features(backbone, data.train_x, data.mean, data.std, **kw),
               "test_f": extract_features(backbone, data.test_x, data.mean, data.std, **kw),
               "train_y": data.train_y, "test_y": data.test_y, "num_classes": torch.tensor(len(data.classes))}
        if _state_hash(backbone) != before:  # frozen, eval mode: BatchNorm statistics must not move
            raise RuntimeError("the encoder's weights changed while extracting features")
        return out

    def run(self, name: str, protocol: dict[str, Any], fn: Callable[[], dict[str, float]]) -> dict[str, Any]:
        """The stored result of evaluation ``name`` under ``protocol`` (plus data and normalisation), or a new one."""
        protocol = protocol | {"data": self.data_key, "normalization": self.ckpt.normalization,
                               "features": FEATURES_PROTOCOL}
        return load_or_run(self.run_dir, name, protocol, fn, force=self.force, checkpoint_sha256=self.sha)

    def describe(self, result: dict[str, Any]) -> str:
        how = "reused the stored result" if result["reused"] else f"computed in {result['seconds']:.1f} s" + (
            " from cached features" if self.features_reused else "")
        return f"{self.run_dir} ({how})"


def open_checkpoint(path: Path, command: str, *, device: torch.device, sets: list[str], batch: int,
                    force: bool) -> Encoded:
    """Read ``path`` (a run folder or checkpoint) for ``command``; the data comes from its recipe plus ``sets``."""
    overrides = data_overrides(sets, command)
    ckpt = read_checkpoint(path, command)
    table = data_table(ckpt, overrides)
    return Encoded(ckpt, device, overrides, batch, force, sha=file_sha256(ckpt.path),
                   data_key={name: table.get(name) for name in DATA_KEYS})


EVALUATE_NAMES = ("calibration", "occlusion", "fgsm", "corruptions")


def evaluate_checkpoint(enc: Encoded, names: list[str], *, batch: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(name, stored result)`` of each robustness evaluator in ``names`` on ``enc``'s reported classifier.

    The test set and the classifier are loaded once, and only when some result is not stored yet;
    calibration also draws ``reliability.png`` in the run folder (recomputed when the picture is missing).
    """
    from mixbench.data.gpu_loader import Normalize
    from mixbench.evaluate.base import EvalContext
    from mixbench.evaluate.calibration import Calibration, calibration_counts, reliability_diagram
    from mixbench.evaluate.corruptions import Corruptions
    from mixbench.evaluate.robustness import FGSM, Occlusion

    ctx, cache = EvalContext(enc.device), {}

    def data() -> Any:
        if "data" not in cache:
            cache["data"] = eval_data(enc.ckpt, data_overrides=enc.overrides, device=enc.device)
        return cache["data"]

    def model() -> torch.nn.Module:
        if "model" not in cache:
            cache["model"] = enc.ckpt.build_classifier().to(enc.device)
        return cache["model"]

    def calibration() -> dict[str, float]:
        d = data()
        norm = Normalize(d.mean, d.std, enc.device)
        loader = ((norm(d.test_x[i:i + batch]), d.test_y[i:i + batch]) for i in range(0, d.test_x.shape[0], batch))
        stats = calibration_counts(model(), loader, ctx)
        reliability_diagram(stats, enc.run_dir / "reliability.png", f"{enc.run_dir.name} reliability")
        return stats.metrics()

    occlusion, fgsm, corruptions = Occlusion(batch=batch), FGSM(batch=batch), Corruptions(batch=batch)
    jobs = {"calibration": ({"n_bins": 15, "protocol": Calibration.protocol}, calibration),
            "occlusion": (occlusion.settings(enc.device), lambda: occlusion(model(), data(), ctx)),
            "fgsm": (fgsm.settings(), lambda: fgsm(model(), data(), ctx)),
            "corruptions": ({"protocol": corruptions.protocol, "device": enc.device.type},
                            lambda: corruptions(model(), data(), ctx))}
    for name in names:
        settings, fn = jobs[name]
        redraw = name == "calibration" and not (enc.run_dir / "reliability.png").is_file()
        force, enc.force = enc.force, enc.force or redraw  # the diagram is drawn only while computing
        try:
            yield name, enc.run(name, settings, fn)
        finally:
            enc.force = force
