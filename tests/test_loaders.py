"""``build_loaders`` for every batch spec, and sharding over processes (CPU, tiny shapes data)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from mixbench.data import DataConfig, build_loaders
from mixbench.data.batches import LabelledBatch, SemiSupervisedBatch, ViewsBatch
from mixbench.data.gpu_loader import Augment, DeviceLoader, Shard, Views, crop_flip, random_resized_crop_flip
from mixbench.data.randaugment import rand_augment
from mixbench.data.semisup import SemiBatch, sharded_rand_augment
from mixbench.errors import UserError

CPU = torch.device("cpu")


def shapes_cfg(tmp_path, train_size: int = 64, test_size: int = 20, **kw) -> DataConfig:
    return DataConfig(source="shapes", train_size=train_size, test_size=test_size, image_size=16,
                      cache_dir=str(tmp_path), **kw)


def build(cfg: DataConfig, batch=LabelledBatch(), *, batch_size: int = 16, eval_batch_size: int = 8, seed: int = 5,
          rank: int = 0, world_size: int = 1, drop_last: bool = True):
    g = torch.Generator().manual_seed(seed)
    return build_loaders(cfg, device=CPU, batch_size=batch_size, eval_batch_size=eval_batch_size, generator=g,
                         batch=batch, rank=rank, world_size=world_size, drop_last=drop_last)


def state_hash(g: torch.Generator) -> str:
    return hashlib.sha256(g.get_state().numpy().tobytes()).hexdigest()[:16]


def flat(batch) -> list[torch.Tensor]:
    """The tensors of an (x, y), ``SemiBatch`` or ``Views`` batch, in order."""
    if isinstance(batch, Views):
        return [*batch.views, batch.y]
    return list(batch)


def epochs(loader, n: int = 2) -> list[list[torch.Tensor]]:
    return [flat(b) for _ in range(n) for b in loader]


def assert_ranks_concatenate(parts: list[list[list[torch.Tensor]]], whole: list[list[torch.Tensor]]) -> None:
    """Rank batches, concatenated in rank order, are the one-process batches, bit for bit."""
    assert all(len(p) == len(whole) for p in parts)
    for step, full in enumerate(whole):
        for k, t in enumerate(full):
            assert torch.equal(torch.cat([p[step][k] for p in parts]), t), (step, k)


# ------------------------------------------------------------------------------------- one process


# Recorded from the code before batch specs and sharding existed (build_loaders / build_semisup_loaders
# with the same arguments, generator seed 5): labels of the first batch, float64 sum of each batch's
# images, and a hash of the generator state after one epoch (pins the random draws and their order).
RECORDED = {
    "crop_flip": ([0, 1, 8, 3, 9, 3], [-1011.16957, -1408.517307, -1209.905765, 555.653274], "e35c46b6fe9a69a6"),
    "rrc_flip": ([0, 1, 8, 3, 9, 3], [910.925075, 981.98612, 713.451248, 2341.257732], "8a353d34d49b668e"),
}
RECORDED_SEMI = ([5, 9, 2, 8], [3, 3, 1, 9, 8, 0, 0, 2, 6, 6, 0, 1],
                 [[-368.157488, -402.113311, -391.226417], [313.663945, -440.304754, 2053.914515]], "9895941a04b3baea")


@pytest.mark.parametrize("augment", ["crop_flip", "rrc_flip"])
def test_labelled_one_process_matches_the_recorded_batches(tmp_path, augment):
    cfg = shapes_cfg(tmp_path, augment=augment)
    g = torch.Generator().manual_seed(5)
    train, test, info = build_loaders(cfg, device=CPU, batch_size=16, eval_batch_size=8, generator=g,
                                      batch=LabelledBatch())
    batches = list(train)
    labels, sums, digest = RECORDED[augment]
    assert len(train) == len(batches) == 4 and train.images_per_step == 16
    assert batches[0][1][:6].tolist() == labels
    assert [b[0].double().sum().item() for b in batches] == pytest.approx(sums, abs=1e-5)
    assert state_hash(g) == digest
    assert info.train_len == 64 and info.test_len == 20 and sum(x.shape[0] for x, _ in test) == 20
    # and the same as a DeviceLoader built directly, for two epochs
    g2 = torch.Generator().manual_seed(5)
    direct = DeviceLoader(train.images, train.labels, 16, train=True, augment=Augment(augment), mean=info.mean,
                          std=info.std, generator=g2)
    assert_ranks_concatenate([epochs(direct)], [flat(b) for b in batches] + epochs(train, 1))


def test_semisup_one_process_matches_the_recorded_batches(tmp_path):
    cfg = shapes_cfg(tmp_path, labels_per_class=2, unlabeled_ratio=3)
    g = torch.Generator().manual_seed(5)
    train, _, info = build_loaders(cfg, device=CPU, batch_size=4, eval_batch_size=8, generator=g,
                                   batch=SemiSupervisedBatch())
    batches = list(train)
    y_l, u_y, sums, digest = RECORDED_SEMI
    assert len(batches) == len(train) == 5 and isinstance(batches[0], SemiBatch)
    assert batches[0].y_l.tolist() == y_l and batches[0].u_y.tolist() == u_y
    got = [[t.double().sum().item() for t in (b.x_l, b.u_w, b.u_s)] for b in batches[:2]]
    assert got[0] == pytest.approx(sums[0], abs=1e-5) and got[1] == pytest.approx(sums[1], abs=1e-5)
    assert state_hash(g) == digest
    assert train.images_per_step == 4 * (1 + 3) and info.train_len == 20 and info.test_len == 20


# ------------------------------------------------------------------------------------------ sharding


@pytest.mark.parametrize(("augment", "padding_mode", "drop_last"), [
    ("crop_flip", "reflect", True), ("crop_flip", "zeros", True), ("rrc_flip", "reflect", True),
    ("flip", "reflect", True), ("crop_flip", "reflect", False),
])
def test_labelled_ranks_concatenate_to_the_one_process_batch(tmp_path, augment, padding_mode, drop_last):
    cfg = shapes_cfg(tmp_path, augment=augment, padding_mode=padding_mode)
    kw = {"batch_size": 24, "drop_last": drop_last}  # 64 images: 2 steps, or 3 with a last batch of 16
    whole, _, _ = build(cfg, **kw)
    ranks = [build(cfg, rank=r, world_size=2, **kw)[0] for r in range(2)]
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == (2 if drop_last else 3)
    assert all(ld.images_per_step == 24 for ld in [whole, *ranks])
    parts = [epochs(ld) for ld in ranks]
    assert all(p[0][0].shape[0] == 12 for p in parts)
    assert_ranks_concatenate(parts, epochs(whole))
    assert state_hash(ranks[0].generator) == state_hash(ranks[1].generator) == state_hash(whole.generator)


def test_views_ranks_concatenate_to_the_one_process_batch(tmp_path):
    spec = ViewsBatch.from_kinds(("rrc_flip", "crop_flip", "none"))
    whole, _, _ = build(shapes_cfg(tmp_path), spec)
    ranks = [build(shapes_cfg(tmp_path), spec, rank=r, world_size=2)[0] for r in range(2)]
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == 4
    assert_ranks_concatenate([epochs(ld) for ld in ranks], epochs(whole))


def test_semisup_ranks_concatenate_to_the_one_process_batch(tmp_path):
    cfg = shapes_cfg(tmp_path, labels_per_class=2, unlabeled_ratio=3)
    whole, _, _ = build(cfg, SemiSupervisedBatch(), batch_size=4)
    ranks = [build(cfg, SemiSupervisedBatch(), batch_size=4, rank=r, world_size=2) for r in range(2)]
    assert len(whole) == len(ranks[0][0]) == len(ranks[1][0]) == 5
    assert all(ld.images_per_step == 16 and info.train_len == 20 for ld, _, info in ranks)
    parts = [epochs(ld) for ld, _, _ in ranks]
    b = parts[0][0]
    assert b[0].shape[0] == 2 and b[2].shape[0] == b[3].shape[0] == 6  # x_l, u_w, u_s of B/2 and μB/2
    assert_ranks_concatenate(parts, epochs(whole))


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_rand_augment_is_a_slice_of_rand_augment(world_size):
    x = torch.randint(0, 256, (10, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    whole = rand_augment(x, torch.Generator().manual_seed(2))
    for r in range(world_size):
        lo, hi = r * 10 // world_size, (r + 1) * 10 // world_size
        part = sharded_rand_augment(x[lo:hi], torch.Generator().manual_seed(2), Shard(lo, hi, 10))
        assert torch.equal(part, whole[lo:hi])


def test_augmentations_draw_for_the_global_batch_and_check_the_shard():
    x = torch.randint(0, 256, (8, 3, 10, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    g_whole, g = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    whole = crop_flip(x, g_whole, 3, "reflect")
    part = crop_flip(x[2:5], g, 3, "reflect", shard=Shard(2, 5, 8))
    assert torch.equal(part, whole[2:5])
    assert torch.equal(g.get_state(), g_whole.get_state())  # advanced as for all 8 rows
    rrc = random_resized_crop_flip(x.float(), torch.Generator().manual_seed(4), (0.3, 1.0), (0.75, 1.33))
    part = random_resized_crop_flip(x[5:].float(), torch.Generator().manual_seed(4), (0.3, 1.0), (0.75, 1.33),
                                    shard=Shard(5, 8, 8))
    assert torch.equal(part, rrc[5:])
    with pytest.raises(ValueError, match="rows"):
        crop_flip(x[:3], g, 3, "reflect", shard=Shard(0, 4, 8))


@pytest.mark.parametrize("world_size", [2, 3])
def test_test_shards_cover_the_test_set_once_in_order(tmp_path, world_size):
    cfg = shapes_cfg(tmp_path, test_size=21)
    _, whole, info = build(cfg, batch_size=12, eval_batch_size=4)
    shards = [build(cfg, batch_size=12, eval_batch_size=4, rank=r, world_size=world_size) for r in range(world_size)]
    assert all(i.test_len == 21 == info.test_len for _, _, i in shards)
    got = [list(test) for _, test, _ in shards]
    sizes = [sum(x.shape[0] for x, _ in g) for g in got]
    assert sizes == [(r + 1) * 21 // world_size - r * 21 // world_size for r in range(world_size)]
    assert all(x.shape[0] <= 4 for g in got for x, _ in g)
    ref_x, ref_y = torch.cat([x for x, _ in whole]), torch.cat([y for _, y in whole])
    assert torch.equal(torch.cat([x for g in got for x, _ in g]), ref_x)
    assert torch.equal(torch.cat([y for g in got for _, y in g]), ref_y)


# --------------------------------------------------------------------------------------------- views


def test_views_are_different_augmentations_of_the_same_images(tmp_path):
    cfg = shapes_cfg(tmp_path)
    views, _, info = build(cfg, ViewsBatch.from_kinds(("none", "crop_flip")))
    plain, _, _ = build(cfg.__class__(**{**cfg.__dict__, "augment": "none"}))
    cropped, _, _ = build(cfg)  # crop_flip: its draws follow the permutation, as view 1's do
    v, (x_plain, y), (x_crop, _) = next(iter(views)), next(iter(plain)), next(iter(cropped))
    assert isinstance(v, Views) and len(v.views) == 2 and torch.equal(v.y, y)
    assert torch.equal(v.views[0], x_plain)  # "none": the normalised raw images
    assert torch.equal(v.views[1], x_crop) and not torch.equal(v.views[0], v.views[1])
    assert views.images_per_step == 32 and len(views) == 4 and info.train_len == 64


def test_two_random_views_differ_but_share_the_image(tmp_path):
    rrc, _, _ = build(shapes_cfg(tmp_path), ViewsBatch.from_kinds(("rrc_flip", "rrc_flip")), batch_size=8)
    a, b = next(iter(rrc)).views
    assert a.shape == b.shape == (8, 3, 16, 16) and a.dtype == torch.float32 and not torch.equal(a, b)
    flips, _, _ = build(shapes_cfg(tmp_path), ViewsBatch.from_kinds(("none", "flip")), batch_size=8)
    raw, flipped = next(iter(flips)).views
    same = (flipped == raw).flatten(1).all(1)
    mirrored = (flipped == raw.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and bool(mirrored.any())
    assert rrc.images_per_step == flips.images_per_step == 16


def test_views_spec_validation():
    assert ViewsBatch.from_kinds(["flip"], padding=2).views == (Augment("flip", padding=2),)
    with pytest.raises(ValueError, match="at least one"):
        ViewsBatch(())
    with pytest.raises(ValueError, match="kind"):
        ViewsBatch.from_kinds(("crop",))
    assert SemiSupervisedBatch.needs_label_split and not LabelledBatch.needs_label_split
    assert not ViewsBatch.needs_label_split


# ---------------------------------------------------------------------------------------- the errors


@pytest.mark.parametrize("spec", [SemiSupervisedBatch(), ViewsBatch.from_kinds(("crop_flip", "crop_flip"))])
def test_streaming_serves_only_labelled_batches(spec):
    with pytest.raises(UserError, match="streaming only feeds labelled"):
        build(DataConfig(source="imagefolder", streaming=True), spec)
    with pytest.raises(UserError, match="does not shard"):
        build(DataConfig(source="imagefolder", streaming=True), world_size=2)


def test_global_batch_must_split_over_the_ranks(tmp_path):
    with pytest.raises(ValueError, match="split evenly"):
        build(shapes_cfg(tmp_path), batch_size=15, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        build(shapes_cfg(tmp_path), rank=2, world_size=2)
    with pytest.raises(ValueError, match="evaluation"):
        DeviceLoader(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.zeros(4), 2, train=False,
                     augment=Augment("none"), mean=(0, 0, 0), std=(1, 1, 1), world_size=2)
