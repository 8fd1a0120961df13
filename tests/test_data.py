"""Data sources in their real formats, the cache, and on-device augmentation."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixbench.data import DataConfig, build_loaders, load_image_data, shapes
from mixbench.data.gpu_loader import Augment, DeviceLoader, crop_flip
from mixbench.errors import UserError

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def write_cifar10(root: Path, per_class: int = 3) -> tuple[np.ndarray, list[int]]:
    """A tiny CIFAR-10 folder in torchvision's pickle layout; returns the first batch's data."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [c for c in range(10) for _ in range(per_class)]
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)
        first = (data, labels) if first is None else first
    names = [f"c{i}".encode() for i in range(10)]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names}, f)
    return first


def write_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", 200), ("test", 100)):
        labels = [i % 100 for i in range(n)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": np.zeros((n, 3072), np.uint8), b"fine_labels": labels,
                         b"coarse_labels": [0] * n}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, f)


def write_imagefolder(root: Path, test_name: str = "test", size: int = 8) -> None:
    rng = np.random.default_rng(1)
    for split, n in (("train", 3), (test_name, 2)):
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")


def test_cifar10_pickles_load_exactly(tmp_path):
    data, labels = write_cifar10(tmp_path)
    d = load_image_data(DataConfig(source="cifar10", root=str(tmp_path), cache_dir=str(tmp_path / "c")))
    assert d.train_x.shape == (150, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (30, 3, 32, 32)
    assert d.classes == [f"c{i}" for i in range(10)]
    assert torch.equal(d.train_x[:30].reshape(30, -1), torch.from_numpy(data))
    assert d.train_y[:30].tolist() == labels
    assert d.mean == (0.4914, 0.4822, 0.4465)


def test_cifar100_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    d = load_image_data(DataConfig(source="cifar100", root=str(tmp_path), cache_dir=str(tmp_path / "c")))
    assert len(d.classes) == 100 and d.train_y.max().item() == 99 and d.test_x.shape[0] == 100


def test_missing_cifar_names_expected_files(tmp_path):
    with pytest.raises(UserError) as e:
        load_image_data(DataConfig(source="cifar10", root=str(tmp_path / "none")))
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "data_batch_1" in msg and "data.download" in msg


def test_balanced_subset_of_cifar(tmp_path):
    write_cifar10(tmp_path)
    d = load_image_data(DataConfig(source="cifar10", root=str(tmp_path), train_size=20, test_size=10,
                                   cache_dir=str(tmp_path / "c")))
    assert torch.bincount(d.train_y, minlength=10).tolist() == [2] * 10
    assert torch.bincount(d.test_y, minlength=10).tolist() == [1] * 10


@pytest.mark.parametrize("test_name", ["test", "val"])
def test_imagefolder_tree_and_targz_agree(tmp_path, test_name):
    tree = tmp_path / "tree"
    write_imagefolder(tree / "wrap", test_name)
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree / "wrap", arcname="wrap")
    a = load_image_data(DataConfig(source="imagefolder", root=str(tree / "wrap"), cache_dir=str(tmp_path / "c")))
    b = load_image_data(DataConfig(source="imagefolder", root=str(archive), cache_dir=str(tmp_path / "c")))
    assert a.classes == b.classes == ["cat", "dog"]
    assert a.train_x.shape == (6, 3, 8, 8) and a.test_x.shape == (4, 3, 8, 8)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    expected = np.asarray(Image.open(tree / "wrap" / "train" / "cat" / "0.png"))
    assert torch.equal(a.train_x[0], torch.from_numpy(expected.copy()).permute(2, 0, 1))


def test_imagefolder_mixed_sizes_need_image_size(tmp_path):
    write_imagefolder(tmp_path)
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "train" / "cat" / "big.png")
    with pytest.raises(UserError, match="data.image_size"):
        load_image_data(DataConfig(source="imagefolder", root=str(tmp_path), cache_dir=str(tmp_path / "c")))
    d = load_image_data(DataConfig(source="imagefolder", root=str(tmp_path), image_size=16,
                                   cache_dir=str(tmp_path / "c")))
    assert d.train_x.shape[1:] == (3, 16, 16)


def test_tiny_imagenet_layout(tmp_path):
    wnids = ["n01", "n02"]
    (tmp_path / "wnids.txt").write_text("\n".join(wnids))
    for w in wnids:
        d = tmp_path / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((64, 64, 3), 10 * i, np.uint8)).save(d / f"{w}_{i}.JPEG")
    val = tmp_path / "val" / "images"
    val.mkdir(parents=True)
    lines = []
    for i, w in enumerate(["n02", "n01", "n02"]):
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(val / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines))
    d = load_image_data(DataConfig(source="tiny-imagenet", root=str(tmp_path), cache_dir=str(tmp_path / "c")))
    assert d.classes == wnids and d.train_x.shape == (4, 3, 64, 64)
    assert d.test_y.tolist() == [1, 0, 1]


def test_shapes_deterministic_balanced_and_not_colour_separable(tmp_path):
    x1, y1 = shapes.generate(400, seed=3)
    x2, y2 = shapes.generate(400, seed=3)
    x3, _ = shapes.generate(400, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert torch.bincount(y1).tolist() == [40] * 10
    # nearest class mean on per-image mean colour stays near chance: colour carries no class
    x, y = shapes.generate(2000, seed=5)
    feats = x.float().mean((2, 3))
    means = torch.stack([feats[:1000][y[:1000] == c].mean(0) for c in range(10)])
    pred = torch.cdist(feats[1000:], means).argmin(1)
    assert (pred == y[1000:]).float().mean().item() < 0.2


def test_shapes_sizes_from_config(tmp_path):
    d = load_image_data(DataConfig(source="shapes", train_size=30, test_size=20, image_size=24,
                                   cache_dir=str(tmp_path)))
    assert d.train_x.shape == (30, 3, 24, 24) and d.test_x.shape == (20, 3, 24, 24)


def test_cache_is_reused_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "data")
    cfg = DataConfig(source="cifar10", root=str(tmp_path / "data"), cache_dir=str(tmp_path / "c"))
    first = load_image_data(cfg)
    import mixbench.data.sources as sources

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(sources, "_unpickle", boom)
    assert torch.equal(load_image_data(cfg).train_x, first.train_x)  # from the cache
    (cache_file,) = (tmp_path / "c").glob("*.pt")
    cache_file.write_bytes(b"garbage")
    monkeypatch.undo()
    assert torch.equal(load_image_data(cfg).train_x, first.train_x)  # rebuilt


def padded_reflect(x: torch.Tensor, p: int) -> torch.Tensor:
    return torch.nn.functional.pad(x.float(), (p, p, p, p), mode="reflect")


def test_crop_is_a_window_of_the_reflect_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = crop_flip(x, g, 4, "reflect", flip=True)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i in range(16):
        pad = padded_reflect(x[i:i + 1], 4)[0]
        windows = [pad[:, a:a + 8, b:b + 8] for a in range(9) for b in range(9)]
        o = out[i].float()
        assert any(torch.equal(o, w) or torch.equal(o, w.flip(-1)) for w in windows)


def test_zero_padding_and_flip_only():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 256, (32, 3, 6, 6), dtype=torch.uint8)
    out = crop_flip(x, g, 2, "zeros", flip=False)
    assert (out == 0).any()  # some crops reach into the zero padding
    flipped = crop_flip(x, g, 0, "reflect", flip=True)
    same = [torch.equal(flipped[i], x[i]) for i in range(32)]
    mirrored = [torch.equal(flipped[i], x[i].flip(-1)) for i in range(32)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and any(mirrored) and any(same)


def test_normalisation_and_no_augmentation():
    x = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    y = torch.arange(10)
    loader = DeviceLoader(x, y, 4, train=False, augment=Augment("none"), mean=(0.5, 0.25, 0.0),
                          std=(0.5, 0.25, 1.0))
    batches = list(loader)
    assert len(loader) == 3 and [b[0].shape[0] for b in batches] == [4, 4, 2]
    got = torch.cat([b[0] for b in batches])
    mean = torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 1.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(got, (x.float() / 255 - mean) / std)
    assert torch.equal(torch.cat([b[1] for b in batches]), y)


def test_epoch_permutation_determinism_and_resume():
    x = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 3, 2, 2).contiguous()
    y = torch.arange(50)

    def loader(seed):
        g = torch.Generator().manual_seed(seed)
        return DeviceLoader(x, y, 8, train=True, augment=Augment("flip"), mean=(0, 0, 0),
                            std=(1, 1, 1), generator=g, drop_last=True), g

    a, ga = loader(0)
    b, _ = loader(0)
    c, _ = loader(1)
    epoch_a, epoch_b, epoch_c = list(a), list(b), list(c)
    assert len(a) == 6
    labels = torch.cat([t[1] for t in epoch_a])
    assert labels.unique().numel() == 48  # each index at most once per epoch, 2 dropped
    assert all(torch.equal(p[0], q[0]) for p, q in zip(epoch_a, epoch_b, strict=True))
    assert not all(torch.equal(p[1], q[1]) for p, q in zip(epoch_a, epoch_c, strict=True))
    state = ga.get_state()
    next_epoch = [t[1] for t in a]
    ga.set_state(state)
    assert all(torch.equal(p, t[1]) for p, t in zip(next_epoch, a, strict=True))


def test_rrc_changes_images_but_keeps_shape():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    loader = DeviceLoader(x, torch.arange(4), 4, train=True, augment=Augment("rrc_flip"), mean=(0, 0, 0),
                          std=(1, 1, 1), generator=g)
    (xb, _), = list(loader)
    assert xb.shape == (4, 3, 16, 16) and xb.dtype == torch.float32
    assert xb.min() >= 0 and xb.max() <= 1.0001


def test_build_loaders_channels_last(tmp_path):
    g = torch.Generator().manual_seed(0)
    train, test, info = build_loaders(DataConfig(source="shapes", train_size=40, test_size=20,
                                                 cache_dir=str(tmp_path)),
                                      device=torch.device("cpu"), batch_size=16, eval_batch_size=50,
                                      generator=g, channels_last=True)
    x, y = next(iter(train))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.shape == (16, 3, 32, 32)
    assert info.num_classes == 10 and info.train_len == 40 and len(train) == 2 and len(test) == 1


def test_streaming_loader_matches_contract(tmp_path):
    write_imagefolder(tmp_path, size=12)
    g = torch.Generator().manual_seed(0)
    train, test, info = build_loaders(DataConfig(source="imagefolder", root=str(tmp_path), streaming=True,
                                                 image_size=8, num_workers=0),
                                      device=torch.device("cpu"), batch_size=2, eval_batch_size=4,
                                      generator=g)
    x, y = next(iter(train))
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(train) == 3 and len(test) == 1 and info.num_classes == 2


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason="shared CIFAR-10 JPEG archive not present")
def test_shared_cifar10_jpeg_archive(tmp_path):
    d = load_image_data(DataConfig(source="imagefolder", root=str(SHARED_CIFAR), train_size=2000,
                                   test_size=500, cache_dir=str(tmp_path)))
    assert d.classes[0] == "airplane" and len(d.classes) == 10
    assert d.train_x.shape == (2000, 3, 32, 32)
    assert torch.bincount(d.train_y).tolist() == [200] * 10
