"""Semi-supervised data: batched RandAugment, the labelled subset and the FixMatch loader (CPU, tiny)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch.utils._python_dispatch import TorchDispatchMode

from mixbench.data import DATASETS, DataConfig, build_semisup_loaders
from mixbench.data.gpu_loader import Augment
from mixbench.data.randaugment import (
    OPS,
    apply_ops,
    autocontrast,
    cutout_mask,
    equalize,
    posterize,
    rand_augment,
    solarize,
    warp,
)
from mixbench.data.semisup import SemiBatch, SemiSupLoader, labelled_indices
from mixbench.errors import UserError
from mixbench.params import check_table
from mixbench.recipe import DATA_SCHEMA, _cross_checks


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen(seed))


def forced(x: torch.Tensor, op: str, m: float, sign: float = 1.0) -> torch.Tensor:
    """``apply_ops`` with every sample given the single op ``op`` at magnitude ``m``."""
    b = x.shape[0]
    ops = torch.full((b, 1), OPS.index(op))
    return apply_ops(x.float(), ops, torch.full((b, 1), m), torch.full((b, 1), sign))


def to_pil(img: torch.Tensor) -> Image.Image:
    return Image.fromarray(img.permute(1, 2, 0).numpy())


def from_pil(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------- rand_augment


def test_rand_augment_shape_dtype_device_and_determinism():
    x = rand_images(32)
    a = rand_augment(x, gen(3))
    assert a.shape == x.shape and a.dtype == torch.uint8 and a.device == x.device
    assert torch.equal(a, rand_augment(x, gen(3)))
    assert not torch.equal(a, rand_augment(x, gen(4)))
    assert (a != x).float().mean() > 0.3  # Cutout alone changes a quarter of most images
    cl = rand_augment(x.contiguous(memory_format=torch.channels_last), gen(3))
    assert torch.equal(cl, a)  # a channels_last view gives the same result


def test_restoring_generator_state_reproduces_a_batch():
    g, x = gen(5), rand_images(8)
    rand_augment(x, g)
    state = g.get_state()
    first = rand_augment(x, g)
    g.set_state(state)
    assert torch.equal(rand_augment(x, g), first)


def test_identity_cases():
    x = rand_images(8)
    assert torch.equal(rand_augment(x, gen(), num_ops=0, cutout=0.0), x)  # no ops, no Cutout
    assert torch.equal(forced(x, "identity", 0.7).to(torch.uint8), x)  # identity op: exact copy
    for op in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y", "solarize", "posterize"):
        assert torch.equal(forced(x, op, 0.0).to(torch.uint8), x), op  # magnitude 0 leaves these alone
    with pytest.raises(ValueError):
        rand_augment(x.float(), gen())


def test_solarize_and_posterize_match_pil_and_magnitudes():
    x = rand_images(4, 8)
    for i, t in enumerate((0, 77, 128, 256)):
        ref = from_pil(ImageOps.solarize(to_pil(x[i]), t))
        assert torch.equal(solarize(x[i:i + 1].float(), torch.tensor([float(t)])).to(torch.uint8)[0], ref)
    # magnitude m -> threshold 256 (1 - m): m = 0.5 inverts exactly the values >= 128
    half = forced(x, "solarize", 0.5)
    assert torch.equal(half, torch.where(x >= 128, 255 - x.float(), x.float()))
    for bits in (1, 4, 6, 8):
        ref = from_pil(ImageOps.posterize(to_pil(x[0]), bits))
        got = posterize(x[:1].float(), torch.tensor([bits])).to(torch.uint8)[0]
        assert torch.equal(got, ref) and torch.equal(got, x[0] & (0xFF << (8 - bits) & 0xFF))
    assert torch.equal(forced(x, "posterize", 0.1).to(torch.uint8), x)  # m < 0.2: 8 bits
    assert torch.equal(forced(x, "posterize", 0.5).to(torch.uint8), x & 0xFC)  # 8 - floor(2.5) = 6 bits
    assert torch.equal(forced(x, "posterize", 0.9).to(torch.uint8), x & 0xF0)  # m >= 0.8: 4 bits


def test_autocontrast_hand_definition():
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = torch.tensor([[50.0, 100.0], [125.0, 150.0]])  # stretched to 0..255
    x[0, 1] = 77.0  # constant channel: unchanged
    x[0, 2] = torch.tensor([[0.0, 255.0], [10.0, 20.0]])  # already full range
    out = autocontrast(x)
    assert out[0, 0].tolist() == [[0.0, 128.0], [191.0, 255.0]]  # (x - 50) * 2.55, rounded
    assert torch.equal(out[0, 1:], x[0, 1:])
    img = rand_images(1, 8)[0] // 2 + 40
    ref = from_pil(ImageOps.autocontrast(to_pil(img))).float()
    assert (autocontrast(img[None].float())[0] - ref).abs().max() <= 1  # PIL truncates, we round


def test_equalize_known_histogram_and_pil():
    x = torch.zeros(1, 1, 32, 32)
    x.view(-1)[:256], x.view(-1)[256:512], x.view(-1)[512:768], x.view(-1)[768:] = 10, 20, 30, 40
    # step = (1024 - 256) // 255 = 3; lut[v] = (1 + pixels below v) // 3, clipped: 0, 85, 171, 255
    out = equalize(x)
    assert sorted(out.unique().tolist()) == [0.0, 85.0, 171.0, 255.0]
    assert torch.equal(out.view(-1)[::256], torch.tensor([0.0, 85.0, 171.0, 255.0]))
    few = torch.tensor([[[[3.0, 9.0], [9.0, 200.0]]]])
    assert torch.equal(equalize(few), few)  # step = 0 -> unchanged
    imgs = torch.cat([rand_images(2, 32), (rand_images(1, 32) // 8) * 3 + 17])
    for img in imgs:
        ref = from_pil(ImageOps.equalize(to_pil(img)))
        assert torch.equal(equalize(img[None].float()).to(torch.uint8)[0], ref)


@pytest.mark.parametrize("op,enhance", [("brightness", ImageEnhance.Brightness), ("color", ImageEnhance.Color),
                                        ("contrast", ImageEnhance.Contrast),
                                        ("sharpness", ImageEnhance.Sharpness)])
def test_enhance_ops_match_pil_within_rounding(op, enhance):
    x = rand_images(3, 12, seed=7)
    for m in (0.0, 0.5, 1.0):
        factor = 0.05 + 0.9 * m
        got = forced(x, op, m)
        for i in range(3):
            ref = from_pil(enhance(to_pil(x[i])).enhance(factor)).float()
            assert (got[i] - ref).abs().max() <= 1, (op, m)
    b = forced(x, "brightness", 1.0)  # factor 0.95, blend with black
    assert torch.equal(b, (x.float() * 0.95).round())


def test_whole_pixel_translate_is_a_roll_with_grey_fill():
    x = rand_images(2, 10)
    shifted = forced(x, "translate_x", 1.0, sign=1.0)  # t = 0.3 * 10 = 3 px: output col j reads col j + 3
    ref = torch.roll(x, -3, dims=3).float()
    ref[..., -3:] = 128
    assert torch.equal(shifted, ref)
    down = forced(x, "translate_y", 1.0, sign=-1.0)  # reads row i - 3: content moves down
    ref = torch.roll(x, 3, dims=2).float()
    ref[..., :3, :] = 128
    assert torch.equal(down, ref)
    # two picks compose into one affine map: 3 + 3 = 6 px
    ops = torch.full((2, 2), OPS.index("translate_x"))
    both = apply_ops(x.float(), ops, torch.ones(2, 2), torch.ones(2, 2))
    ref = torch.roll(x, -6, dims=3).float()
    ref[..., -6:] = 128
    assert torch.equal(both, ref)


def test_warp_convention_rotation_and_shear():
    x = rand_images(2, 9).float()
    quarter = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).expand(2, 3, 3)
    # output (X, Y) reads input (-Y, X) about the centre: a quarter turn of the pixel grid
    assert torch.equal(warp(x, quarter), torch.rot90(x, 1, dims=(2, 3)))
    rot = forced(x.to(torch.uint8), "rotate", 0.8)
    assert torch.equal(rot[..., 4, 4], x[..., 4, 4])  # the centre pixel of an odd-sized image stays put
    sh = forced(x.to(torch.uint8), "shear_x", 1.0)  # row y reads x + 0.3 (y - 4): the middle row stays
    assert torch.equal(sh[..., 4, :], x[..., 4, :]) and not torch.equal(sh, x)


def test_cutout_area():
    n, size = 4000, 16
    x = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    out = rand_augment(x, gen(1), num_ops=0, cutout=0.5)
    grey = out[:, 0] == 127
    assert torch.equal(out == 127, grey.unsqueeze(1).expand_as(out))  # same box in every channel
    rows, cols = grey.any(2).sum(1), grey.any(1).sum(1)
    assert torch.equal(grey.sum((1, 2)), rows * cols)  # an axis-aligned rectangle
    assert rows.min() >= 4 and rows.max() == 8 and cols.min() >= 4 and cols.max() == 8  # clipped 8-px square
    # centre uniform over pixels, box rows [c - 4, c + 4) clipped: expected side per axis
    side = np.mean([min(c + 4, size) - max(c - 4, 0) for c in range(size)])
    expected = side**2 / size**2
    assert abs(grey.float().mean().item() - expected) < 0.01
    m = cutout_mask(torch.tensor([8]), torch.tensor([8]), 8, 16, 16)
    assert m.sum().item() == 64 and m[0, 0, 4:12, 4:12].all()


def test_ops_are_picked_per_sample():
    x = rand_images(256, 8)
    out = rand_augment(x, gen(2), num_ops=1, cutout=0.0)
    same = (out == x).flatten(1).all(1).float().mean().item()
    # identity, and mostly tiny changes otherwise: some samples keep their image, most do not
    assert 0.02 < same < 0.5


class SyncRecorder(TorchDispatchMode):
    """Records the ATen ops that would make a CUDA host sync: a scalar read, nonzero, bool-mask indexing."""

    SYNCING = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique_consecutive",
               "aten._unique2", "aten.item"}

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        flat = [a for a in args if isinstance(a, list | tuple)]
        if name in self.SYNCING or (name.startswith("aten.index") and any(
                isinstance(t, torch.Tensor) and t.dtype == torch.bool for seq in flat for t in seq)):
            self.found.append(name)
        return func(*args, **(kwargs or {}))


def test_no_host_syncs_in_rand_augment_and_loader():
    x = rand_images(16, 8)
    ld = index_loader(strong_ops=2, cutout=0.5)
    with SyncRecorder() as rec:
        rand_augment(x, gen())
        for _ in ld:
            pass
    assert rec.found == []
    with SyncRecorder() as rec:  # the recorder does catch them
        x[x > 3].sum().item()
    assert "aten._local_scalar_dense" in rec.found and "aten.index" in rec.found


def test_rand_augment_cpu_time_is_reasonable():
    x = rand_images(448, 32)
    rand_augment(x, gen())
    import time

    t = time.perf_counter()
    rand_augment(x, gen())
    assert time.perf_counter() - t < 2.0  # ~60 ms on 2 CPU cores; generous bound for busy machines


# ---------------------------------------------------------------------------------------- labelled subset


def test_labelled_indices_balanced_sorted_deterministic():
    labels = np.repeat(np.arange(5), 20)
    np.random.default_rng(0).shuffle(labels)
    idx = labelled_indices(labels, 4, None, seed=1)
    assert len(idx) == 20 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [4] * 5
    assert np.array_equal(idx, labelled_indices(labels, 4, None, seed=1))
    assert not np.array_equal(idx, labelled_indices(labels, 4, None, seed=2))
    assert set(idx) <= set(labelled_indices(labels, 9, None, seed=1))  # nested for one seed
    tot = labelled_indices(labels, None, 12, seed=1)  # 12 = 5 x 2 + 2: classes 0 and 1 get one more
    assert np.bincount(labels[tot]).tolist() == [3, 3, 2, 2, 2]
    assert np.array_equal(labelled_indices(labels, None, None, seed=1), np.arange(100))


def test_labelled_indices_errors():
    labels = np.array([0] * 10 + [1] * 3)
    with pytest.raises(UserError, match="class 1, which has only 3"):
        labelled_indices(labels, 4, None, seed=0)
    with pytest.raises(UserError, match="num_labels = 10 needs 5"):
        labelled_indices(labels, None, 10, seed=0)
    with pytest.raises(UserError, match="mutually exclusive"):
        labelled_indices(labels, 2, 4, seed=0)
    with pytest.raises(UserError, match="fewer than the 2 classes"):
        labelled_indices(labels, None, 1, seed=0)
    with pytest.raises(UserError, match="class 2, which has only 0"):
        labelled_indices(labels, 1, None, seed=0, num_classes=3)


def test_recipe_keys_and_mutual_exclusion():
    values, problems = check_table({"num_labels": 40}, DATA_SCHEMA, "[data]", {})
    assert not problems and values["num_labels"] == 40
    assert values["labels_per_class"] is None and values["unlabeled_ratio"] == 7
    DataConfig(**values)  # every [data] key is a DataConfig field
    for bad in ({"unlabeled_ratio": 0}, {"labels_per_class": 0}, {"num_labels": 0}):
        assert check_table(bad, DATA_SCHEMA, "[data]", {})[1]
    both, _ = check_table({"num_labels": 40, "labels_per_class": 4}, DATA_SCHEMA, "[data]", {})
    found = _cross_checks({"data": both, "model": {}, "train": {}}, {}, DATASETS)
    assert len(found) == 1 and "labels_per_class" in found[0] and "num_labels" in found[0]
    assert not _cross_checks({"data": values, "model": {}, "train": {}}, {}, DATASETS)


# ---------------------------------------------------------------------------------------- loader


def index_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Constant images whose value is their index (crop/flip keeps them), labels = index % 10."""
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    return x, torch.arange(n) % 10


def index_loader(n=200, per_class=2, bs=8, mu=2, seed=0, **kw) -> SemiSupLoader:
    x, y = index_images(n)
    lab = torch.from_numpy(labelled_indices(y.numpy(), per_class, None, seed=0))
    kw = {"strong_ops": 0, "cutout": 0.0} | kw
    return SemiSupLoader(x, y, lab, bs, augment=Augment("crop_flip", 2), mean=(0, 0, 0), std=(1, 1, 1),
                         generator=gen(seed), unlabeled_ratio=mu, **kw)


def ids(t: torch.Tensor) -> list[int]:
    return (t[:, 0, 0, 0] * 255).round().long().tolist()


def test_loader_len_formula():
    assert len(index_loader(200, bs=8, mu=2)) == 12  # 200 // 16
    assert len(index_loader(200, bs=4, mu=7)) == 7  # 200 // 28
    empty = index_loader(20, per_class=1, bs=4, mu=7)  # 20 < 28 unlabelled images per step
    assert len(empty) == 0 and list(empty) == []
    ld = index_loader()
    assert ld.num_labelled == 20 and ld.num_unlabelled == 200


def test_loader_batches_labelled_stream_and_pairing():
    ld = index_loader(200, per_class=2, bs=8, mu=2)
    labelled = set(ld.labelled.tolist())
    batches = list(ld)
    assert len(batches) == 12 and all(isinstance(b, SemiBatch) for b in batches)
    b = batches[0]
    assert b.x_l.shape == (8, 3, 8, 8) and b.u_w.shape == b.u_s.shape == (16, 3, 8, 8)
    assert b.x_l.dtype == b.u_w.dtype == b.u_s.dtype == torch.float32
    assert b.y_l.dtype == b.u_y.dtype == torch.int64 and b.y_l.shape == (8,) and b.u_y.shape == (16,)
    stream = [i for b in batches for i in ids(b.x_l)]
    assert set(stream) <= labelled
    assert all(b.y_l.tolist() == [i % 10 for i in ids(b.x_l)] for b in batches)
    # 96 draws from 20 labelled images: each pass of the stream is a permutation of the labelled set
    for start in range(0, 96, 20):
        chunk = stream[start:start + 20]
        assert len(set(chunk)) == len(chunk) and (len(chunk) < 20 or set(chunk) == labelled)
    # unlabelled: distinct images of the whole training set, u_s pairs with u_w, u_y their labels
    unl = [i for b in batches for i in ids(b.u_w)]
    assert len(set(unl)) == 192 and not set(unl) <= labelled
    for b in batches:
        assert ids(b.u_s) == ids(b.u_w) and b.u_y.tolist() == [i % 10 for i in ids(b.u_w)]


def test_labelled_set_larger_than_needed_and_smaller_than_a_batch():
    tiny = index_loader(200, per_class=None, bs=16, mu=1)  # labelled = all 200 images
    assert tiny.num_labelled == 200
    few = SemiSupLoader(*index_images(64), torch.tensor([3, 9, 27]), 8, augment=Augment("none"),
                        mean=(0, 0, 0), std=(1, 1, 1), generator=gen(), unlabeled_ratio=2, strong_ops=0, cutout=0.0)
    stream = [i for b in few for i in ids(b.x_l)]
    assert len(stream) == 32 and all(sorted(stream[k:k + 3]) == [3, 9, 27] for k in range(0, 30, 3))


def test_loader_reproducible_and_resumable():
    def batches(ld, epochs=1):
        return [b for _ in range(epochs) for b in ld]

    a = batches(index_loader(seed=3, strong_ops=2, cutout=0.5), 2)
    b = batches(index_loader(seed=3, strong_ops=2, cutout=0.5), 2)
    assert all(torch.equal(s, t) for ba, bb in zip(a, b, strict=True) for s, t in zip(ba, bb, strict=True))
    ld = index_loader(seed=3, strong_ops=2, cutout=0.5)
    list(ld)
    state = ld.generator.get_state()
    second = list(ld)
    ld.generator.set_state(state)
    again = list(ld)
    assert all(torch.equal(s, t) for ba, bb in zip(second, again, strict=True) for s, t in zip(ba, bb, strict=True))
    assert not torch.equal(second[0].x_l, a[0].x_l) or not torch.equal(second[0].u_w, a[0].u_w)


def test_build_semisup_loaders_on_shapes(tmp_path):
    cfg = DataConfig(source="shapes", train_size=64, test_size=20, image_size=16, labels_per_class=2,
                     unlabeled_ratio=3, cache_dir=str(tmp_path))
    train, test, info = build_semisup_loaders(cfg, device=torch.device("cpu"), batch_size=4, eval_batch_size=8,
                                              generator=gen(), channels_last=True)
    assert info.train_len == 20 and info.test_len == 20 and info.num_classes == 10
    assert len(train) == 64 // 12 and train.num_unlabelled == 64
    b = next(iter(train))
    assert b.x_l.shape == (4, 3, 16, 16) and b.u_s.shape == (12, 3, 16, 16)
    assert b.u_s.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(b.u_s, b.u_w)  # strong view differs (Cutout at least)
    assert b.x_l.abs().max() < 5 and math.isfinite(b.u_s.sum().item())  # normalised
    assert sum(x.shape[0] for x, _ in test) == 20
    with pytest.raises(UserError, match="streaming"):
        build_semisup_loaders(DataConfig(source="imagefolder", streaming=True), device=torch.device("cpu"),
                              batch_size=4, eval_batch_size=8, generator=gen())
    with pytest.raises(UserError, match="3 × 32 = 96 unlabelled images"):
        build_semisup_loaders(cfg, device=torch.device("cpu"), batch_size=32, eval_batch_size=8, generator=gen())
