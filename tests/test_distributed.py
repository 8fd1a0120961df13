"""Process-group helpers and the CPU SyncBatchNorm, checked with 2 gloo processes on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mixbench.engine import distributed as D
from mixbench.errors import RecipeError, UserError

WORLD = 2
JOIN_TIMEOUT_S = 60.0
_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, port: int, out: str, body: Callable[[D.DistInfo], dict]) -> None:
    """One torchrun-like process: set the environment, join the group, run ``body``, save what it returns."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        info = D.setup("cpu")
        try:
            result = body(info)
        finally:
            D.teardown(info)
            D.teardown(info)  # a second call is harmless
        torch.save(result, Path(out) / f"rank{rank}.pt")
    except BaseException:
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


# what a rank says when another job took the free port first (its own store, or a stranger answering on it)
PORT_TAKEN = ("address already in use", "eaddrinuse", "distnetworkerror", "diststoreerror", "connection reset",
              "broken pipe")


def _spawn_once(body: Callable[[D.DistInfo], dict], out: Path) -> tuple[list[int], list[int | None], str]:
    """Start 2 ranks on a fresh port; (ranks still alive at the timeout, exit codes, their tracebacks)."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_child, args=(r, port, str(out), body)) for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    errors = "\n".join(f.read_text() for f in sorted(out.glob("rank*.err")))
    return hung, [p.exitcode for p in procs], errors


def _spawn(body: Callable[[D.DistInfo], dict], tmp_path: Path, attempts: int = 3) -> list[dict]:
    """Run ``body`` on 2 processes; fail (never hang) if one errs or outlives the timeout.

    Between ``_free_port`` closing its socket and rank 0's store binding it, another process on a busy machine
    (a concurrent torchrun) can take the port: only that failure is retried, on a new port.
    """
    for attempt in range(attempts):
        out = tmp_path / f"try{attempt}"
        out.mkdir()
        hung, codes, errors = _spawn_once(body, out)
        if codes == [0] * WORLD and not hung:
            return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
        if not any(mark in errors.lower() for mark in PORT_TAKEN):
            break
    assert not hung, f"ranks {hung} still running after {JOIN_TIMEOUT_S:.0f} s\n{errors}"
    assert codes == [0] * WORLD, errors
    raise AssertionError(f"2 ranks failed {attempts} times on a port taken by another process\n{errors}")


def _both_bodies(info: D.DistInfo) -> dict:
    return {"bn": _bn_body(info), "helpers": _helpers_body(info)}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Both multi-process scenarios in one spawn of 2 gloo ranks (starting processes is the slow part)."""
    return _spawn(_both_bodies, tmp_path_factory.mktemp("ranks"))


# -- GlobalBatchNorm2d on 2 ranks vs nn.BatchNorm2d on the whole batch -------------------------------------------

# case: (rows of the 8-sample batch on rank 0 and rank 1, momentum, input shape)
CASES = {"even": ((4, 4), 0.1, (8, 4, 5, 5)), "uneven": ((3, 5), None, (8, 4, 5, 5)),
         "empty": ((0, 8), 0.1, (8, 4, 5, 5)), "1d": ((4, 4), 0.1, (8, 4))}


def _bn_case(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    _, momentum, shape = CASES[name]
    g = torch.Generator().manual_seed(0)
    bn = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(4, momentum=momentum)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(4, generator=g))
        bn.bias.copy_(torch.randn(4, generator=g))
        bn.running_mean.copy_(torch.randn(4, generator=g))
        bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
    x = torch.randn(shape, generator=g) * 3 + 2
    w = torch.randn(shape, generator=g)
    return bn, x, w


def _bn_step(bn: nn.Module, x: torch.Tensor, w: torch.Tensor) -> dict:
    x = x.clone().requires_grad_(True)
    out = bn(x)
    (out * w).sum().backward()
    return {"out": out.detach(), "x_grad": x.grad, "w_grad": bn.weight.grad, "b_grad": bn.bias.grad,
            "running_mean": bn.running_mean.clone(), "running_var": bn.running_var.clone(),
            "num_batches_tracked": bn.num_batches_tracked.clone()}


def _bn_body(info: D.DistInfo) -> dict:
    assert info.enabled and info.backend == "gloo" and dist.get_world_size() == WORLD
    results = {}
    for name, (split, _, shape) in CASES.items():
        bn, x, w = _bn_case(name)
        model = D.convert_sync_batchnorm(nn.Sequential(bn), torch.device("cpu"))
        assert isinstance(model[0], D.GlobalBatchNorm2d if len(shape) == 4 else D.GlobalBatchNorm1d)
        start = sum(split[: info.rank])
        rows = slice(start, start + split[info.rank])
        results[name] = _bn_step(model[0], x[rows], w[rows])
    return results


def _tag(case: str, key: str) -> Callable[[str], str]:
    return lambda detail: f"case {case}, {key}: {detail}"


def test_global_batchnorm_matches_whole_batch(two_ranks: list[dict]) -> None:
    """Outputs, input gradients, summed weight/bias gradients and running stats equal one process's BatchNorm."""
    ranks = [r["bn"] for r in two_ranks]
    for name in CASES:
        ref = _bn_step(*_bn_case(name))
        got = [r[name] for r in ranks]
        for key in ("out", "x_grad"):
            torch.testing.assert_close(torch.cat([g[key] for g in got]), ref[key], msg=_tag(name, key))
        for key in ("w_grad", "b_grad"):
            torch.testing.assert_close(got[0][key] + got[1][key], ref[key], msg=_tag(name, key))
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            for g in got:
                torch.testing.assert_close(g[key], ref[key], msg=_tag(name, key))


# -- rank0_first, any_rank, broadcast_object, all_reduce_sum -------------------------------------------------------

def _raise(exc: Exception) -> None:
    raise exc


def _catch(fn: Callable[[], object]) -> tuple[str, str]:
    try:
        return "ok", repr(fn())
    except Exception as e:
        return type(e).__name__, str(e)


def _helpers_body(info: D.DistInfo) -> dict:
    return {
        "user": _catch(lambda: D.rank0_first(lambda: _raise(UserError("boom")), info)),
        "recipe": _catch(lambda: D.rank0_first(lambda: _raise(RecipeError(["bad a", "bad b"])), info)),
        "other": _catch(lambda: D.rank0_first(lambda: _raise(OSError("disk")), info)),
        "value": D.rank0_first(lambda: 42, info),
        "any_rank1": D.any_rank(info.rank == 1, info),
        "any_none": D.any_rank(False, info),
        "broadcast": D.broadcast_object({"from": info.rank}, info),
        "sum": D.all_reduce_sum(torch.tensor([info.rank + 1.0]), info).item(),
    }


def test_rank0_first_and_collectives(two_ranks: list[dict]) -> None:
    r0, r1 = (r["helpers"] for r in two_ranks)
    assert r0["user"] == r1["user"] == ("UserError", "boom")
    assert r0["recipe"] == r1["recipe"] == ("RecipeError", "bad a\nbad b")
    assert r0["other"] == ("OSError", "disk")
    assert r1["other"] == ("RuntimeError", "rank 0 failed: OSError: disk")
    assert (r0["value"], r1["value"]) == (42, None)
    assert r0["any_rank1"] is r1["any_rank1"] is True
    assert r0["any_none"] is r1["any_none"] is False
    assert r0["broadcast"] == r1["broadcast"] == {"from": 0}
    assert r0["sum"] == r1["sum"] == 3.0


# -- single process -----------------------------------------------------------------------------------------------

@pytest.fixture
def no_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in _ENV:
        monkeypatch.delenv(key, raising=False)


def test_per_device_batch() -> None:
    info = D.DistInfo(rank=1, world_size=3)
    assert info.per_device_batch(96) == 32
    with pytest.raises(UserError, match=r"^\[train\]\.batch_size = 100 does not divide over 3 processes; "
                                        r"use a multiple of 3$"):
        info.per_device_batch(100)
    with pytest.raises(UserError, match=r"\[eval\]\.batch_size = 7 .* 3 processes"):
        info.per_device_batch(7, key="[eval].batch_size")
    assert D.DistInfo().per_device_batch(7) == 7


def test_from_env_and_setup_single_process(no_torchrun: None, monkeypatch: pytest.MonkeyPatch) -> None:
    info = D.DistInfo.from_env()
    assert info == D.DistInfo() and info.world_size == 1 and info.is_main and not info.enabled
    assert D.setup("cpu") == D.DistInfo() and not dist.is_initialized()
    D.teardown(info)
    D.teardown(info)
    assert D.device_for(info, torch.device("cpu")) == torch.device("cpu")
    assert D.device_for(info, torch.device("cuda")) == torch.device("cuda", 0)
    assert D.device_for(info, torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert D.device_for(D.DistInfo(1, 2, 1), torch.device("cuda")) == torch.device("cuda", 1)
    assert D.rank0_first(lambda: 7, info) == 7
    assert D.any_rank(True, info) and not D.any_rank(False, info)
    assert D.broadcast_object("x", info) == "x"

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = D.DistInfo.from_env()
    assert (info.rank, info.world_size, info.local_rank, info.enabled, info.is_main) == (3, 4, 1, True, False)
    with pytest.raises(UserError, match="MASTER_ADDR"):
        D.setup("cpu")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(UserError, match="RANK = 4"):
        D.DistInfo.from_env()


def test_global_batchnorm_without_group_is_batchnorm() -> None:
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(3, momentum=None)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    glob = D.GlobalBatchNorm2d(3, momentum=None)
    glob.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 4, 4) * 2 + 1
    for _ in range(2):
        assert torch.equal(glob(x), ref(x))
    assert all(torch.equal(a, b) for a, b in zip(glob.state_dict().values(), ref.state_dict().values(), strict=True))
    glob.eval()
    ref.eval()
    assert torch.equal(glob(x), ref(x))


def test_convert_keeps_state_dict() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5)),
                          nn.BatchNorm1d(5, affine=False, track_running_stats=False))
    model(torch.randn(4, 3, 6, 6))  # move the running statistics off their defaults
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[1].weight
    model.eval()
    converted = D.convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(converted[1], D.GlobalBatchNorm2d) and isinstance(converted[3][3], D.GlobalBatchNorm1d)
    assert isinstance(converted[4], D.GlobalBatchNorm1d) and converted[4].running_mean is None
    assert converted[1].weight is weight and not converted[1].training
    after = converted.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).load_state_dict(
        {k: v for k, v in after.items() if k.split(".")[0] in ("0", "1")})
