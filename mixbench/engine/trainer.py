"""The training loop, readable top to bottom.

``fit`` takes the run folder (:func:`mixbench.results.records.open_run`: a lock, a staged folder for
``--overwrite``), assembles the run (:func:`mixbench.engine.build.build_run`) and hands
it to a :class:`Trainer`, which for each epoch: draws the on-device permutation (inside the
loader), calls the method on each batch under autocast, backpropagates through the gradient scaler,
steps the optimiser, lets the method update its momentum modules, updates the weight EMA, and
evaluates every ``eval.every`` epochs. The host synchronises only every ``train.log_every`` steps
and at epoch ends. Each epoch's record also holds its CPU seconds (``time.process_time`` of this process: every
thread, not wall time, so a shared machine disturbs it less) and torch's intra-op ``threads`` (set by
``[train].threads``, else left as torch chose). Checkpoints are written atomically at epoch boundaries and hold
``Trainer.state_dict()``; ``--resume`` is ``Trainer.load_state_dict`` of it, which restores every
state (weights, optimiser, scaler, EMA, all random generators) so a resumed run reproduces an
uninterrupted one. Under torchrun, only rank 0 writes records and prints.

Every way a run ends leaves a final status in meta.json: ``completed``, ``interrupted`` (SIGINT/SIGTERM,
caught from before setup on), ``diverged`` or ``failed``, whether it ends in setup or in training. An
overwrite replaces the old run only once it has written its first checkpoint; one that ends before then
is dropped and leaves the old run as it was.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

from mixbench.checkpoint import CHECKPOINT_KIND, CHECKPOINT_VERSION, read_checkpoint
from mixbench.engine.build import Run, build_run
from mixbench.engine.distributed import (
    DistInfo,
    all_reduce_sum,
    any_rank,
    broadcast_object,
    device_for,
    rank0_first,
    setup,
    teardown,
)
from mixbench.engine.progress import Reporter, make_reporter
from mixbench.engine.seeding import global_rng_state, set_global_rng_state
from mixbench.engine.stopping import Interrupted, StopFlag
from mixbench.errors import DivergedError, UserError
from mixbench.evaluate import EvalContext, TopKAccuracy, topk_accuracy
from mixbench.mixing.base import MixRNG
from mixbench.mixing.cost import time_ms
from mixbench.recipe import Recipe
from mixbench.results.atomic import atomic_torch_save
from mixbench.results.differs import method_differs
from mixbench.results.records import (
    OpenRun,
    RunDir,
    collect_meta,
    device_name,
    open_run,
    process_fields,
    summarize,
    utc_now,
)


@dataclass
class TrainResult:
    status: str  # completed | interrupted (stop_after)
    summary: dict[str, Any]
    run_dir: Path
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # [eval].after: name -> stored result (rank 0)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"--device '{name}' is not valid; use auto, cpu or cuda")
    return torch.device(name)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def _probe_batch(loader, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first test batch, repeated or cut to ``batch_size``: the fixed input of the mixer's
    cost probe and of the saved mix grids (it draws nothing from the training generators)."""
    x, y = next(iter(loader))
    reps = -(-batch_size // x.shape[0])
    return x.repeat(reps, 1, 1, 1)[:batch_size].contiguous(), y.repeat(reps)[:batch_size]


class Trainer:
    """Owns the loop over an assembled :class:`Run`; ``run_dir`` is None on ranks other than 0."""

    def __init__(self, run: Run, run_dir: RunDir | None, reporter: Reporter):
        self.run, self.run_dir, self.reporter = run, run_dir, reporter
        self.epoch, self.step, self.wall = 0, 0, 0.0
        self.eval_ctx = EvalContext(run.device, run.recipe.train["precision"], run.dist)
        self.mixer_ms: float | None = None
        self.calibration: dict[str, float] = {}  # ece, mce, nll of a completed run
        self.checkpoint_epoch: int | None = None  # the epoch the run's checkpoint on disk holds

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs (the random states of every process, gathered to each)."""
        run = self.run
        rng = {"global": global_rng_state(), "loader": run.loader_gen.get_state(), "mix": run.mix_rng.state_dict()}
        if run.dist.enabled:
            ranks: list[Any] = [None] * run.dist.world_size
            torch_dist.all_gather_object(ranks, rng)
        else:
            ranks = [rng]
        return {"epoch": self.epoch, "step": self.step, "wall_time_s": self.wall,
                "world_size": run.dist.world_size, "method": run.method.state_dict(),
                "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
                "ema": run.ema.state_dict() if run.ema is not None else None, "rng": ranks,
                "recipe_hash": run.recipe.config_hash()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        run = self.run
        if state.get("world_size", 1) != run.dist.world_size:
            raise UserError(f"the checkpoint was written by {state.get('world_size', 1)} processes and this run has "
                            f"{run.dist.world_size}; resume with the same number of processes")
        run.method.load_state_dict(state["method"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scaler.load_state_dict(state["scaler"])
        if run.ema is not None and state.get("ema") is not None:
            run.ema.load_state_dict(state["ema"])
        rng = state["rng"][run.dist.rank]
        set_global_rng_state(rng["global"])
        run.loader_gen.set_state(rng["loader"])
        run.mix_rng.load_state_dict(rng["mix"])
        self.epoch, self.step, self.wall = state["epoch"], state["step"], state["wall_time_s"]
        self.checkpoint_epoch = self.epoch

    def save_checkpoint(self) -> None:
        """``checkpoint.pt`` (self-describing, see :mod:`mixbench.checkpoint`) and the method's exports.

        A staged overwrite takes the old run's place here, at its first checkpoint.
        """
        state = self.state_dict()  # every rank takes part (the random states are gathered)
        if self.run_dir is not None:
            atomic_torch_save(self.run_dir.checkpoint_path, {"kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION,
                                                             **self.run.checkpoint_header(), **state})
            for file_name, obj in self.run.method.export().items():
                atomic_torch_save(self.run_dir.path / file_name, obj)
            self.run_dir.commit()
        self.checkpoint_epoch = self.epoch

    # ------------------------------------------------------------ one epoch

    def train_epoch(self, stop: StopFlag) -> dict[str, Any]:
        """One pass over the training data; returns the epoch's record (loss, lr, terms, speed)."""
        run, tcfg = self.run, self.run.recipe.train
        method, optimizer, scaler = run.method, run.optimizer, run.scaler
        steps, log_every, images = run.steps_per_epoch, tcfg["log_every"], run.images_per_step
        clip = [p for g in optimizer.param_groups for p in g["params"]] if tcfg["grad_clip"] else []
        method.train()
        dev = run.device
        t0 = t_log = time.perf_counter()
        cpu0 = time.process_time()
        s_log, lr = 0, 0.0
        loss_sum = torch.zeros((), device=dev)
        term_sums: dict[str, torch.Tensor] = {}  # the method's other named scalars, summed on the device
        bad = torch.zeros((), device=dev, dtype=torch.bool)
        for i, batch in enumerate(run.train_loader, start=1):
            lr = run.schedule.apply(optimizer, self.step)
            method.global_step = self.step
            with self.eval_ctx.autocast():
                out = run.step_module(batch)
            loss = out["loss"]
            for key, value in out.items():
                if key != "loss" and value.dim() == 0:
                    term_sums[key] = term_sums.get(key, 0.0) + value.detach().float()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(clip, tcfg["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            self.step += 1
            method.on_step_end(self.step)
            if run.ema is not None:
                run.ema.update(method.model, self.step)
            loss = loss.detach()
            loss_sum += loss
            bad |= ~torch.isfinite(loss)
            if i % log_every == 0 or i == steps:  # the one host sync per log_every steps
                if any_rank(bool(bad), run.dist):
                    raise DivergedError(f"non-finite loss in epoch {self.epoch + 1}, step {i}")
                now = time.perf_counter()
                self.reporter.step(self.epoch + 1, i, loss.item(), lr, (i - s_log) * images / max(now - t_log, 1e-9))
                t_log, s_log = now, i
            if self._stop_now(stop, i == steps or i % log_every == 0):
                raise Interrupted
        train_s = time.perf_counter() - t0
        cpu_s = time.process_time() - cpu0
        if run.dist.enabled:  # the epoch means over every process's images: one all-reduce per epoch
            packed = all_reduce_sum(torch.stack([loss_sum, *term_sums.values()]), run.dist) / run.dist.world_size
            loss_sum, term_sums = packed[0], dict(zip(term_sums, packed[1:], strict=True))
        record: dict[str, Any] = {"epoch": self.epoch + 1, "train_loss": loss_sum.item() / steps, "lr": lr,
                                  "top1": None, "top5": None, "epoch_seconds": train_s,
                                  "images_per_s": steps * images / train_s, "cpu_seconds": cpu_s,
                                  "threads": torch.get_num_threads()}
        if term_sums:  # epoch means of e.g. mask_rate, pseudo_acc, loss_mixer: one sync per epoch
            means = (torch.stack(list(term_sums.values())) / steps).tolist()
            record["terms"] = dict(zip(term_sums, means, strict=True))
        return record

    def _stop_now(self, stop: StopFlag, at_sync: bool) -> bool:
        """A stop request: checked every step alone, at sync points when all ranks must agree."""
        if not self.run.dist.enabled:
            return stop.requested
        return at_sync and any_rank(stop.requested, self.run.dist)

    # ------------------------------------------------------------ evaluation

    def evaluate(self, last: bool = False) -> dict[str, float]:
        """Top-1/top-5 of every classifier the method reports (and of the weight EMA), and the method's
        monitors (``last``: the run's final evaluation)."""
        run = self.run
        if run.dist.enabled:
            _sync_buffers(run.method)  # every rank evaluates rank 0's BatchNorm statistics
        t = time.perf_counter()
        out = TopKAccuracy()(run.method, run.test_loader, self.eval_ctx)
        if run.ema is not None and run.recipe.eval["ema"]:
            out["ema_top1"], out["ema_top5"] = topk_accuracy(run.ema.module, run.test_loader, self.eval_ctx)
        out.update(self._monitor(last))
        out["eval_seconds"] = time.perf_counter() - t
        return out

    def _monitor(self, last: bool) -> dict[str, float]:
        """The method's monitors on this process's unaugmented images; under torchrun each rank scores its
        slice of the test set and the means are weighted by slice size (one all-reduce)."""
        from mixbench.evaluate.features import EvalData

        run = self.run
        tl, ev = run.train_loader, run.test_loader
        data = EvalData(tl.images, tl.labels, ev.images, ev.labels, tuple(run.info.mean), tuple(run.info.std),
                        list(run.info.classes))
        out = run.method.monitor(self.epoch, last, data)
        if out and run.dist.enabled:
            n = float(ev.images.shape[0])
            packed = all_reduce_sum(torch.tensor([n, *(v * n for v in out.values())], device=run.device), run.dist)
            out = dict(zip(out, (packed[1:] / packed[0].clamp_min(1)).tolist(), strict=True))
        return out

    # ------------------------------------------------------------ the loop

    def probe_mixer(self) -> None:
        """Time the method's mix on a fixed test batch (``mixer_ms_per_step``), never the training stream."""
        run = self.run
        if not run.method.mixes:
            return
        per_rank = run.recipe.train["batch_size"] // run.dist.world_size
        self.probe_x, self.probe_y = _probe_batch(run.test_loader, per_rank)
        probe_rng = MixRNG(run.recipe.seed + 7919, run.device)
        with self.eval_ctx.autocast():
            self.mixer_ms = time_ms(lambda: run.method.mix_preview(self.probe_x, self.probe_y, probe_rng), run.device,
                                    repeats=3, warmup=1)

    def save_mixes(self, epoch: int) -> None:
        from mixbench.visualize import save_mixes as write_grid

        run = self.run
        x, y = self.probe_x[:8], self.probe_y[:8]
        mix = run.method.mix_preview(x, y, MixRNG(run.recipe.seed + epoch, run.device))
        write_grid(self.run_dir.path / "mixes" / f"epoch{epoch:04d}.png", x, mix, run.info.mean, run.info.std,
                   run.info.classes, title=f"{run.method_name} after epoch {epoch}")

    def fit(self, stop: StopFlag | None = None) -> TrainResult:
        """Train from ``self.epoch`` to the end (or ``[train].stop_after``) and write the summary.

        ``stop`` is the run's signal flag (:func:`fit` installs it before setup); without one, one is installed
        here. A diverged or interrupted run raises with ``checkpoint_epoch`` and ``note`` (what was kept).
        """
        if stop is None:
            with StopFlag() as own:
                return self.fit(own)
        stop.defer()  # from here a signal stops the loop at its next check, with a checkpoint
        tcfg = self.run.recipe.train
        epochs = tcfg["epochs"]
        stop_after = tcfg["stop_after"] or epochs
        prior_wall, t_run = self.wall, time.perf_counter()
        try:
            self.probe_mixer()
            t_run = time.perf_counter()
            self.reporter.start(epochs, self.run.steps_per_epoch, self.epoch)
            self._loop(stop, epochs, stop_after, prior_wall, t_run)
            if stop_after >= epochs:
                self.calibrate()
        except DivergedError as e:
            self._finish("diverged", prior_wall + time.perf_counter() - t_run)
            e.checkpoint_epoch = self.checkpoint_epoch  # for the CLI's message: what was kept
            e.note = _kept(self.run_dir, self.checkpoint_epoch, diverged=True)
            raise
        except (Interrupted, KeyboardInterrupt):
            self._finish("interrupted", prior_wall + time.perf_counter() - t_run)
            raise Interrupted(_kept(self.run_dir, self.checkpoint_epoch), self.checkpoint_epoch) from None
        except BaseException:
            self._finish("failed", prior_wall + time.perf_counter() - t_run)
            raise
        status = "completed" if stop_after >= epochs else "interrupted"
        return TrainResult(status, self._finish(status, self.wall), self._run_path())

    def calibrate(self) -> None:
        """ECE / MCE / NLL of the reported classifier on the test set, and ``reliability.png`` (rank 0)."""
        from mixbench.evaluate.calibration import calibration_counts, reliability_diagram

        run = self.run  # right after the last evaluation: the BatchNorm statistics are already rank 0's
        stats = calibration_counts(run.method.reported_classifier(), run.test_loader, self.eval_ctx)
        self.calibration = stats.metrics()
        if self.run_dir is not None:
            reliability_diagram(stats, self.run_dir.path / "reliability.png",
                                f"{run.recipe.name}: {run.method_name}, epoch {self.epoch}")

    def _loop(self, stop: StopFlag, epochs: int, stop_after: int, prior_wall: float, t_run: float) -> None:
        """The epochs: train, evaluate, record, checkpoint, report; stop when a signal asked."""
        run, tcfg, ecfg = self.run, self.run.recipe.train, self.run.recipe.eval
        while self.epoch < min(epochs, stop_after):
            record = self.train_epoch(stop)
            self.epoch += 1
            if self.epoch % ecfg["every"] == 0 or self.epoch in (epochs, stop_after):
                record.update(self.evaluate(last=self.epoch in (epochs, stop_after)))
            self.wall = prior_wall + time.perf_counter() - t_run
            record["wall_time_s"] = self.wall
            if self.run_dir is not None:
                self.run_dir.append_metrics(record)
                if run.method.mixes and ecfg["save_mixes"] and self.epoch % ecfg["save_mixes"] == 0:
                    self.save_mixes(self.epoch)
            if self.epoch % tcfg["checkpoint_every"] == 0 or self.epoch in (epochs, stop_after):
                self.save_checkpoint()
            self.reporter.epoch_end(record)
            if self._stop_now(stop, True):
                raise Interrupted

    def _run_path(self) -> Path:
        recipe = self.run.recipe
        return self.run_dir.path if self.run_dir is not None else Path(recipe.name) / recipe.run_id()

    def _finish(self, status: str, wall: float) -> dict[str, Any]:
        """Close the progress display; on rank 0 write the summary and the final status.

        A staged overwrite that ends before its first checkpoint writes nothing: it is dropped, the old run stays.
        """
        self.reporter.close()
        if self.run_dir is None or self.run_dir.staged:
            return {}
        run = self.run
        metrics = self.run_dir.read_metrics()
        summary = summarize(metrics, status=status,
                            base={**self._summary_base(), "status": status, "wall_time_s": wall,
                                  "peak_memory_mb": _peak_memory_mb(run.device)})
        cpu = [m["cpu_seconds"] for m in metrics if m.get("cpu_seconds") is not None]
        summary["cpu_seconds"] = sum(cpu) if cpu else None  # training CPU time of the epochs recorded (rank 0)
        summary["threads"] = torch.get_num_threads()
        if self.mixer_ms is not None and summary.get("images_per_s"):
            step_ms = 1000.0 * run.images_per_step / summary["images_per_s"]
            summary["mixer_overhead_pct"] = 100.0 * self.mixer_ms / step_ms
        self.run_dir.write_summary(summary)
        self.run_dir.update_meta(status=status, end_time=utc_now())
        return summary

    def _summary_base(self) -> dict[str, Any]:
        run, recipe = self.run, self.run.recipe
        return {"schema": 1, "name": recipe.name, "run_id": recipe.run_id(), "method": run.method_name,
                "dataset": recipe.data["source"], "backbone": recipe.model["name"], "loss": recipe.loss["name"],
                "epochs": recipe.train["epochs"], "seed": recipe.seed, "device": device_name(run.device),
                "params": sum(p.numel() for p in run.method.model.parameters()),
                "mixer_ms_per_step": self.mixer_ms, "method_settings": run.method.describe(),
                "differs": method_differs(run.method),  # how it departs from the reference (compare's dagger)
                "labels": run.info.train_len if run.method.batch.needs_label_split else None,
                **self.calibration, **_distributed_fields(run)}


def _distributed_fields(run: Run) -> dict[str, Any]:
    """How the batch was spread over processes (recorded in the summary and meta)."""
    global_batch = run.recipe.train["batch_size"]
    return {"world_size": run.dist.world_size, "backend": run.dist.backend, "global_batch": global_batch,
            "per_process_batch": global_batch // run.dist.world_size,
            "mixing_pairs": "within each process's batch" if run.method.mixes else None,
            "sync_bn": bool(run.recipe.train["sync_bn"]) and run.dist.enabled}


@torch.no_grad()
def _sync_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank."""
    for buf in module.buffers():
        torch_dist.broadcast(buf, src=0)


def read_resume_checkpoint(path: Path) -> dict[str, Any]:
    """The training state of a run's checkpoint; a version-1 file is refused with one sentence."""
    ckpt = read_checkpoint(path, "--resume")
    if ckpt.data.get("migrated_from") == 1:
        raise UserError(f"{path}: written by an earlier mixbench (checkpoint version 1), which cannot be resumed; "
                        "start again with --overwrite")
    return ckpt.data


def _kept(run_dir: RunDir | None, checkpoint_epoch: int | None, *, diverged: bool = False,
          resumable: bool = False) -> str:
    """What a run that ended early left on disk and how to go on: the clause the CLI prints."""
    if run_dir is not None and run_dir.staged:
        return f"the new run wrote no checkpoint, so {run_dir.target} still holds the earlier run, unchanged"
    if checkpoint_epoch is not None:
        return (f"the checkpoint of epoch {checkpoint_epoch}, the last good one, was kept" if diverged
                else f"the checkpoint of epoch {checkpoint_epoch} was kept; continue with --resume")
    if resumable:
        return "its checkpoint was kept; continue with --resume"
    return ("it diverged before its first checkpoint, so none was written" if diverged
            else "no checkpoint was written yet; --resume starts the run afresh")


def fit(recipe: Recipe, *, out_root: Path, device: torch.device, resume: bool = False, overwrite: bool = False,
        command_line: list[str] | None = None, reporter: Reporter | None = None) -> TrainResult:
    """Train ``recipe`` and write its run record below ``out_root`` (see the module docstring).

    SIGINT/SIGTERM are handled from the first line on: during setup they stop the run at once, during training
    at the next step; either way its status becomes ``interrupted`` and :class:`Interrupted` is raised.

    A completed run then runs the evaluators of ``[eval].after`` (:mod:`mixbench.evaluate.after`) on rank 0 alone,
    after the run is recorded, its lock released and the process group gone: they only add ``RUN/evals/``, and a
    failure or Ctrl-C there leaves the run record whole (the error says so).
    """
    with StopFlag(immediate=True) as stop, _torch_threads(recipe.train.get("threads")):
        dist = setup(device.type)
        dev, reporter = device_for(dist, device), reporter or make_reporter(dist.is_main)
        clean = False
        try:
            result = _fit(recipe, dist, stop, out_root=Path(out_root), device=dev, resume=resume,
                          overwrite=overwrite, command_line=command_line, reporter=reporter)
            clean = True
        finally:
            teardown(dist, barrier=clean)
        stopped = stop.requested  # a signal after the last step's check: the run is complete, skip the rest
    if result.status == "completed" and dist.is_main and recipe.eval["after"]:
        with _torch_threads(recipe.train.get("threads")):
            result.evals = _evaluate_after(result.run_dir, recipe.eval["after"], dev, reporter, stopped=stopped)
    return result


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` (``[train].threads``) for the block, then put back;
    ``None`` leaves them as they are."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _evaluate_after(run_dir: Path, names: list[str], device: torch.device, reporter: Reporter, *,
                    stopped: bool = False) -> dict[str, Any]:
    """``[eval].after`` on the completed run; an error, Ctrl-C or SIGTERM is raised again saying the run is whole."""
    from mixbench.evaluate.after import evaluate_after

    whole = f"the run completed and is recorded in {run_dir}"
    finish = (f"finish with `mixbench run ... --resume` (stored results are reused) or the commands "
              f"linear-eval, knn, evaluate on {run_dir}")
    if stopped:
        raise Interrupted(f"{whole}; a stop was asked for, so its [eval].after evaluations did not run; {finish}")
    reporter.message(f"training done; [eval].after: {', '.join(dict.fromkeys(names))}")
    try:
        with StopFlag(immediate=True):  # SIGTERM too stops here with exit 130, like Ctrl-C
            return evaluate_after(run_dir, names, device=device, say=reporter.message)
    except (Interrupted, KeyboardInterrupt):
        raise Interrupted(f"{whole}; its [eval].after evaluations were stopped (finished ones are stored); "
                          f"{finish}") from None
    except UserError as e:
        raise UserError(f"{whole}, but an [eval].after evaluation failed: {e}") from None
    except BaseException:
        reporter.message(f"error: {whole}, but an [eval].after evaluation failed; {finish}")
        raise


def _fit(recipe: Recipe, dist: DistInfo, stop: StopFlag, *, out_root: Path, device: torch.device, resume: bool,
         overwrite: bool, command_line: list[str] | None, reporter: Reporter | None) -> TrainResult:
    """Take the run folder (rank 0), set up, train; the folder's lock is released on every exit path."""
    reporter = reporter or make_reporter(dist.is_main)
    opened = rank0_first(lambda: open_run(out_root, recipe.name, recipe.run_id(), resume=resume,
                                          overwrite=overwrite), dist)
    try:
        resume = broadcast_object(opened.resume if opened is not None else None, dist)
        checkpoint = out_root / recipe.name / recipe.run_id() / "checkpoint.pt"
        trainer = _prepare(recipe, dist, opened, reporter, device=device, checkpoint=checkpoint if resume else None,
                           command_line=command_line)
        return trainer.fit(stop)
    finally:
        if opened is not None:
            opened.close()


def _prepare(recipe: Recipe, dist: DistInfo, opened: OpenRun | None, reporter: Reporter, *, device: torch.device,
             checkpoint: Path | None, command_line: list[str] | None) -> Trainer:
    """Record the start, assemble the run and load ``checkpoint`` (resume); an end here still records a status."""
    run_dir = opened.run_dir if opened is not None else None
    try:
        if opened is not None:
            _record_start(opened, recipe, device, command_line, reporter)
        run = build_run(recipe, device, dist)
        reporter.message(run.essentials())
        trainer = Trainer(run, run_dir, reporter)
        if checkpoint is not None:
            trainer.load_state_dict(read_resume_checkpoint(checkpoint))
        if run_dir is not None:
            _record_setup(run_dir, trainer, resumed=checkpoint is not None)
        return trainer
    except (Interrupted, KeyboardInterrupt):
        if opened is not None:
            opened.end_early("interrupted")
        raise Interrupted(_kept(run_dir, None, resumable=checkpoint is not None)) from None
    except BaseException as e:
        if opened is not None:
            opened.end_early("failed", user_error=isinstance(e, UserError))
        raise


def _record_start(opened: OpenRun, recipe: Recipe, device: torch.device, command_line: list[str] | None,
                  reporter: Reporter) -> None:
    """Tell the user what ``open_run`` noticed; write recipe and meta (a resume: this process, running)."""
    for note in opened.notes:
        reporter.message(note)
    run_dir = opened.run_dir
    run_dir.warn = lambda text: reporter.message(f"warning: {text}")
    if opened.resume:
        run_dir.update_meta(status="running", end_time=None, **process_fields())
        return
    run_dir.write_recipe(recipe.to_toml())
    meta = collect_meta(command_line or sys.argv, recipe.seed, device)
    meta.update(recipe_name=recipe.name, run_id=recipe.run_id())
    run_dir.write_meta(meta)


def _record_setup(run_dir: RunDir, trainer: Trainer, *, resumed: bool) -> None:
    """Once the run is assembled: the method and process layout (new run), or the epoch resumed from."""
    if resumed:
        run_dir.truncate_metrics(trainer.epoch)
        run_dir.update_meta(resumed_at_epoch=trainer.epoch)
    else:
        run_dir.update_meta(method=trainer.run.method_name, **_distributed_fields(trainer.run))


__all__ = ["fit", "Trainer", "TrainResult", "resolve_device", "Interrupted", "read_resume_checkpoint"]
