"""Process-group plumbing for ``torchrun``: gloo on CPU, NCCL on CUDA; one process needs none of it.

``batch_size`` in a recipe is the global batch: each of the ``world_size`` processes takes its
``global / world_size`` slice, and only rank 0 writes run records and reports progress.
torch's ``nn.SyncBatchNorm`` runs only on GPU tensors, so on CPU :class:`GlobalBatchNorm2d` (and
:class:`GlobalBatchNorm1d`) stand in: they compute the same whole-batch statistics, gradients included.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mixbench.errors import RecipeError, UserError

T = TypeVar("T")

_OWNS_GROUP = False  # True while a process group made by setup() is alive


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        raise UserError(f"environment variable {name} = {raw!r} is not an integer") from None


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and reports progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1

    def per_device_batch(self, global_batch: int, key: str = "[train].batch_size") -> int:
        """This process's share ``global_batch // world_size`` of a global batch that must divide evenly."""
        if global_batch % self.world_size:
            raise UserError(f"{key} = {global_batch} does not divide over {self.world_size} processes; "
                            f"use a multiple of {self.world_size}")
        return global_batch // self.world_size

    @classmethod
    def from_env(cls) -> DistInfo:
        """Read torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; unset means one process."""
        info = cls(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
        if info.world_size < 1 or not 0 <= info.rank < info.world_size or info.local_rank < 0:
            raise UserError(f"inconsistent torchrun environment: RANK = {info.rank}, WORLD_SIZE = "
                            f"{info.world_size}, LOCAL_RANK = {info.local_rank}")
        return info


def _group_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (NCCL for ``"cuda"``, else gloo); one process: ``DistInfo()``."""
    global _OWNS_GROUP
    info = DistInfo.from_env()
    if not info.enabled:
        return DistInfo()
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed; run without torchrun")
    if dist.is_initialized():
        return replace(info, backend=str(dist.get_backend()))
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise UserError(f"WORLD_SIZE = {info.world_size} but {' and '.join(missing)} not set; launch with torchrun")
    backend = "gloo"
    if device_type == "cuda":
        if not dist.is_nccl_available():
            raise UserError("multi-GPU training needs NCCL, which this PyTorch build lacks")
        if info.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK = {info.local_rank} but only {torch.cuda.device_count()} GPUs are "
                            f"visible; lower --nproc-per-node")
        torch.cuda.set_device(info.local_rank)
        backend = "nccl"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    _OWNS_GROUP = True
    return replace(info, backend=backend)


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """This process's device: ``cuda:{local_rank}`` under torchrun (or for a bare ``cuda``); others unchanged."""
    if device.type == "cuda" and (info.enabled or device.index is None):
        return torch.device("cuda", info.local_rank)
    return device


def teardown(info: DistInfo, barrier: bool = True) -> None:
    """Destroy the process group if :func:`setup` made it; calling it again does nothing.

    With ``barrier`` (a clean finish) every rank first waits for the others, so that none closes its
    connections while a peer still talks over them (gloo aborts a process whose peer vanished mid-message).
    """
    global _OWNS_GROUP
    if _OWNS_GROUP and dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
    _OWNS_GROUP = False


def _comm_device(info: DistInfo) -> torch.device:
    """Where collective tensors live: the current GPU for NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if info.backend == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks in place and return it; untouched in a single process."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True when any rank passed True (an all-reduce MAX of one integer)."""
    if not info.enabled:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], dtype=torch.int32, device=_comm_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank; ``obj`` itself in a single process."""
    if not info.enabled:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0, device=_comm_device(info))
    return box[0]


def rank0_first(fn: Callable[[], T], info: DistInfo) -> T | None:
    """Run ``fn`` on rank 0 while the others wait; they get ``None``, or rank 0's error if it failed.

    A :class:`UserError` (or :class:`RecipeError`) from ``fn`` is raised on every rank with the same message;
    any other exception becomes a ``RuntimeError`` on the other ranks, so that no rank is left waiting.
    """
    if not (info.enabled and dist.is_available() and dist.is_initialized()):
        return fn()
    result: T | None = None
    failure: tuple[str, Any] | None = None
    error: BaseException | None = None
    if info.is_main:
        try:
            result = fn()
        except RecipeError as e:
            error, failure = e, ("recipe", e.problems)
        except UserError as e:
            error, failure = e, ("user", str(e))
        except Exception as e:
            error, failure = e, ("other", f"{type(e).__name__}: {e}")
    box = [failure]
    dist.broadcast_object_list(box, src=0, device=_comm_device(info))
    if error is not None:
        raise error
    if box[0] is not None:
        kind, payload = box[0]
        if kind == "recipe":
            raise RecipeError(payload)
        if kind == "user":
            raise UserError(payload)
        raise RuntimeError(f"rank 0 failed: {payload}")
    return result


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce SUM of per-channel stats whose last entry is the count, which must exceed 1.

    The backward pass sums the gradients over ranks too, as torch's SyncBatchNorm does.
    """
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():  # deprecated in favour of functional collectives, which older torch lacks
        warnings.simplefilter("ignore", FutureWarning)
        total = all_reduce(t, op=dist.ReduceOp.SUM)
    # CPU only (CUDA uses torch's SyncBatchNorm): reading the count is a read of host memory, not a device sync
    if total[-1].item() <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got {int(total[-1].item())} "
                         f"over all ranks")
    return total


# Under torch.compile the collective runs eagerly (a graph break). torch's lazy wrapper imports torch._dynamo
# only when first called, which keeps importing this module (and the CLI) about 2 s faster.
_sum_over_ranks_eager = getattr(torch, "_disable_dynamo", torch.compiler.disable)(_sum_over_ranks)


class _GlobalBatchNormMixin:
    """Training-mode forward with statistics over the whole global batch, for a ``_BatchNorm`` subclass.

    Rank r holds n_r values per channel with sum S_r and sum of squares Q_r; with N = Σn_r, S = ΣS_r, Q = ΣQ_r
    the batch mean is S/N and the biased variance Q/N − (S/N)², exactly one process's statistics of the whole
    batch. S_r, Q_r come from a local float32 ``var_mean`` and are combined in float64 (no cancellation).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and _group_active()):
            return super().forward(input)
        self._check_input_dim(input)
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        dims = [0, *range(2, x.dim())]
        n_local = x.numel() // x.shape[1]
        if n_local:
            var_r, mean_r = torch.var_mean(x, dims, correction=0)
            var_r, mean_r = var_r.double(), mean_r.double()
            local = torch.cat([n_local * mean_r, n_local * (var_r + mean_r * mean_r), mean_r.new_full((1,), n_local)])
        else:  # an empty slice still joins the collective, forward and backward (hence the 0·Σx)
            local = x.new_zeros(2 * x.shape[1] + 1, dtype=torch.float64) + 0 * x.sum().double()
        total = (_sum_over_ranks_eager if torch.compiler.is_compiling() else _sum_over_ranks)(local)
        c = x.shape[1]
        s, q, n = total[:c], total[c:-1], total[-1]
        mean = s / n
        var = (q / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            self._update_running_stats(mean.detach(), var.detach() * (n / (n - 1)))
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        if self.weight is not None:
            scale = scale * self.weight.to(x.dtype)
        out = (x - mean.to(x.dtype).view(shape)) * scale.view(shape)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype).view(shape)
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """running ← (1 − f)·running + f·batch with f = momentum, or 1/batches_seen when momentum is None."""
        self.num_batches_tracked.add_(1)
        f = 1.0 / self.num_batches_tracked.double() if self.momentum is None else self.momentum  # a tensor: no sync
        self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype) * f)
        self.running_var.mul_(1 - f).add_(unbiased_var.to(self.running_var.dtype) * f)


class GlobalBatchNorm2d(_GlobalBatchNormMixin, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that normalises over the global batch of all ranks while training (CPU SyncBatchNorm)."""


class GlobalBatchNorm1d(_GlobalBatchNormMixin, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that normalises over the global batch of all ranks while training (CPU SyncBatchNorm)."""


def _to_global(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Module:
    cls = GlobalBatchNorm2d if isinstance(bn, nn.BatchNorm2d) else GlobalBatchNorm1d
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:  # share, not clone: the converted module trains the very same parameters and buffers
        new.weight, new.bias = bn.weight, bn.bias
    new.running_mean, new.running_var = bn.running_mean, bn.running_var
    new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Batch norms that use whole-batch statistics: ``nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm2d` on CPU.

    On CPU, ``BatchNorm1d``/``BatchNorm2d`` (and subclasses that keep their forward) are replaced; a subclass with
    its own forward (e.g. timm's ``BatchNormAct2d``) is left alone with a warning. On CUDA, models with timm norm
    layers go through timm's converter, which keeps ``BatchNormAct2d``'s activation. State-dict keys do not change.
    """
    if device.type == "cuda":
        if any(type(m).__module__.startswith("timm.") and isinstance(m, _BatchNorm) for m in module.modules()):
            from timm.layers import convert_sync_batchnorm as timm_convert  # keeps BatchNormAct2d's activation

            return timm_convert(module)
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    skipped: set[str] = set()

    def convert(m: nn.Module) -> nn.Module:
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(m, _GlobalBatchNormMixin):
            if type(m).forward is _BatchNorm.forward:
                return _to_global(m)
            skipped.add(type(m).__name__)
        for name, child in m.named_children():
            m.add_module(name, convert(child))
        return m

    module = convert(module)
    if skipped:
        warnings.warn(f"{', '.join(sorted(skipped))} keep per-process batch statistics on CPU", stacklevel=2)
    return module
