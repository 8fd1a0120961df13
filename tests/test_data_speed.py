"""Speed on the CPU side of the data path: the whole-set cache, the cheap fingerprint, CPU seconds per epoch.

Subsets cut from the whole-set cache must be exactly what decoding only the subset gave (the old path,
re-implemented here from its definition: sorted paths, ``balanced_subset`` of their labels, PIL decode).
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mixbench.data.sources as sources
from mixbench.data import DataConfig, load_image_data, shapes
from mixbench.data.cache import WHOLE_LIMIT_ENV, fingerprint
from mixbench.data.sources import WholeSet, balanced_subset, read_imagefolder
from mixbench.errors import RecipeError, UserError

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ("ant", "bee", "cat")


def write_set(root: Path, train: int = 12, test: int = 4, size: int = 8) -> None:
    """``train``/``test`` random PNGs per class (names chosen so that string order differs from creation order)."""
    rng = np.random.default_rng(7)
    for split, n in (("train", train), ("test", test)):
        for cls in CLASSES:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in rng.permutation(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"im{i}.png")


def pack(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="set")
    return archive


def old_selection(root: Path, split: str, size: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the per-subset reader gave: every image of ``split`` sorted by path, labelled by its sorted class
    folder, the class-balanced subset of ``size`` in that order, decoded with PIL."""
    paths = sorted(str(p) for p in (root / split).rglob("*.png"))
    labels = [CLASSES.index(Path(p).parent.name) for p in paths]
    keep = balanced_subset(labels, size, seed)
    x = np.stack([np.asarray(Image.open(paths[i]).convert("RGB")) for i in keep])
    return torch.from_numpy(x).permute(0, 3, 1, 2), torch.tensor([labels[i] for i in keep])


def assert_old(d, root: Path, train_size: int | None, test_size: int | None, seed: int) -> None:
    for split, size, x, y in (("train", train_size, d.train_x, d.train_y), ("test", test_size, d.test_x, d.test_y)):
        want_x, want_y = old_selection(root, split, size, seed)
        assert torch.equal(x, want_x) and torch.equal(y, want_y), split


class Counter:
    """Counts (and optionally forbids) calls of ``sources.decode_all``."""

    def __init__(self, monkeypatch):
        self.calls, self.forbid, real = 0, False, sources.decode_all

        def counted(*a, **k):
            if self.forbid:
                raise AssertionError("decoded again")
            self.calls += 1
            return real(*a, **k)

        monkeypatch.setattr(sources, "decode_all", counted)


@pytest.mark.parametrize("kind", ["folder", "archive"])
def test_whole_set_cached_once_and_subsets_match_the_old_selection(tmp_path, monkeypatch, kind):
    write_set(tmp_path / "set")
    root = tmp_path / "set" if kind == "folder" else pack(tmp_path / "set", tmp_path / "set.tar.gz")
    decodes = Counter(monkeypatch)

    def load(train_size, test_size, seed=0):
        return load_image_data(
            DataConfig(
                source="imagefolder",
                root=str(root),
                train_size=train_size,
                test_size=test_size,
                seed=seed,
                cache_dir=str(tmp_path / "c"),
            )
        )

    first = load(24, None)  # 24 + 12 of 48 images: at least half, so the whole set is decoded and cached
    assert decodes.calls == 2 and len(list((tmp_path / "c").glob("*.pt"))) == 1
    assert_old(first, tmp_path / "set", 24, None, 0)
    decodes.forbid = True
    for train_size, test_size, seed in ((9, 6, 0), (24, None, 0), (5, 3, 4), (None, None, 0)):
        assert_old(load(train_size, test_size, seed), tmp_path / "set", train_size, test_size, seed)
    assert len(list((tmp_path / "c").glob("*.pt"))) == 1


@pytest.mark.parametrize("kind", ["folder", "archive"])
def test_a_small_first_slice_decodes_itself_and_a_second_subset_the_whole_set(tmp_path, monkeypatch, kind):
    write_set(tmp_path / "set", train=20, test=10)
    root = tmp_path / "set" if kind == "folder" else pack(tmp_path / "set", tmp_path / "set.tar.gz")
    decodes = Counter(monkeypatch)
    cache = tmp_path / "c"

    def load(train_size, test_size, seed=0):
        return load_image_data(
            DataConfig(
                source="imagefolder",
                root=str(root),
                train_size=train_size,
                test_size=test_size,
                seed=seed,
                cache_dir=str(cache),
            )
        )

    assert_old(load(6, 3), tmp_path / "set", 6, 3, 0)  # 9 of 90 images: only the slice, cached by its sizes
    assert decodes.calls == 2 and len(list(cache.glob("*.pt"))) == 1
    subset_file = next(cache.glob("*.pt"))
    assert_old(load(6, 3), tmp_path / "set", 6, 3, 0)  # from its own file
    assert decodes.calls == 2
    assert_old(load(9, 3, seed=1), tmp_path / "set", 9, 3, 1)  # another subset of the same set: decode all once
    assert decodes.calls == 4 and not subset_file.exists() and len(list(cache.glob("*.pt"))) == 1
    decodes.forbid = True
    for train_size, test_size, seed in ((6, 3, 0), (12, 9, 2), (None, None, 0)):
        assert_old(load(train_size, test_size, seed), tmp_path / "set", train_size, test_size, seed)


def test_cifar_subsets_from_the_whole_resized_set_match_the_old_ones(tmp_path, monkeypatch):
    from tests.test_data import write_cifar10

    write_cifar10(tmp_path / "data", per_class=4)
    full = sources.read_cifar("cifar10", tmp_path / "data", False)
    loads = []

    def load(train_size, test_size, seed):
        cfg = DataConfig(
            source="cifar10",
            root=str(tmp_path / "data"),
            image_size=16,
            train_size=train_size,
            test_size=test_size,
            seed=seed,
            cache_dir=str(tmp_path / "c"),
        )
        d = load_image_data(cfg)
        for split, size, x, y in (("train", train_size, d.train_x, d.train_y), ("test", test_size, d.test_x, d.test_y)):
            keep = torch.from_numpy(balanced_subset(full[f"{split}_y"].numpy(), size, seed))  # the old path:
            assert torch.equal(x, sources.resize_uint8(full[f"{split}_x"][keep], 16))  # subset, then resize
            assert torch.equal(y, full[f"{split}_y"][keep])
        loads.append(len(list((tmp_path / "c").glob("*.pt"))))

    load(20, 10, 0)  # 30 of 240: the subset alone
    load(30, 20, 1)  # a second subset: the whole set, resized, replaces the first file
    monkeypatch.setattr(sources, "_unpickle", lambda *a: (_ for _ in ()).throw(AssertionError("read again")))
    load(50, 30, 2)
    assert loads == [1, 1, 1]


def test_whole_set_caching_can_be_turned_off(tmp_path, monkeypatch):
    write_set(tmp_path / "set")
    monkeypatch.setenv(WHOLE_LIMIT_ENV, "0")
    for train_size in (24, 9):
        d = load_image_data(
            DataConfig(
                source="imagefolder", root=str(tmp_path / "set"), train_size=train_size, cache_dir=str(tmp_path / "c")
            )
        )
        assert_old(d, tmp_path / "set", train_size, None, 0)
    assert len(list((tmp_path / "c").glob("*.pt"))) == 2  # one file per subset, as before
    monkeypatch.setenv(WHOLE_LIMIT_ENV, "lots")
    with pytest.raises(UserError, match=WHOLE_LIMIT_ENV):
        load_image_data(
            DataConfig(source="imagefolder", root=str(tmp_path / "set"), train_size=5, cache_dir=str(tmp_path / "c2"))
        )


def test_whole_set_policy():
    small = WholeSet(limit=10 * 3 * 8 * 8)
    assert small.wanted(10, 10, 64, 64)  # the asked subsets are the whole set: always
    assert small.wanted(10, 5, 8, 8) and not small.wanted(10, 4, 8, 8)  # half of it, or more
    assert WholeSet(limit=small.limit, again=True).wanted(10, 1, 8, 8)  # a second subset of the same set
    assert not WholeSet(limit=small.limit - 1, again=True).wanted(10, 9, 8, 8)  # over the limit
    assert small.budget(4, 2) == [small.limit, 12]  # an archive's listing reads at most twice the asked images
    assert WholeSet(limit=5, again=True).budget(4, 2)[1] == small.budget(4, None)[1] == float("inf")


def test_an_unreadable_image_outside_the_subset_still_loads_as_before(tmp_path):
    write_set(tmp_path / "set")
    bad = tmp_path / "set" / "train" / "ant" / "zz.png"
    bad.write_bytes(b"not a png")
    whole = WholeSet(limit=2**30, again=True)
    labels = [CLASSES.index(p.parent.name) for p in sorted((tmp_path / "set" / "train").rglob("*.png"))]
    seed = next(s for s in range(50) if 12 not in balanced_subset(labels, 6, s))  # a subset without zz.png
    d = read_imagefolder(tmp_path / "set", None, 6, 3, seed, whole)
    assert "whole" not in d and d["train_x"].shape[0] == 6
    with pytest.raises(UserError, match="zz.png"):
        read_imagefolder(tmp_path / "set", None, None, None, 0, whole)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_cache_file_is_rebuilt(tmp_path, monkeypatch, damage):
    write_set(tmp_path / "set")
    cfg = DataConfig(source="imagefolder", root=str(tmp_path / "set"), cache_dir=str(tmp_path / "c"))
    decodes = Counter(monkeypatch)
    first = load_image_data(cfg)
    (cache_file,) = (tmp_path / "c").glob("*.pt")
    blob = bytearray(cache_file.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:  # one byte of image data: the file still opens, its checksum does not match
        at = blob.find(first.train_x[0].numpy().tobytes())
        assert at > 0
        blob[at + 5] ^= 0xFF
    cache_file.write_bytes(bytes(blob))
    again = load_image_data(cfg)
    assert decodes.calls == 4  # rebuilt, not trusted
    assert torch.equal(again.train_x, first.train_x) and torch.equal(again.test_y, first.test_y)
    decodes.forbid = True
    assert torch.equal(load_image_data(cfg).train_x, first.train_x)  # the rebuilt file is good


def test_shapes_keeps_a_per_size_cache_and_its_images(tmp_path):
    x, y = shapes.generate(30 + 20, 16, 5)
    assert not torch.equal(shapes.generate(40, 16, 5)[0][:30], x[:30])  # images depend on n: no cutting
    d = load_image_data(
        DataConfig(source="shapes", train_size=30, test_size=20, image_size=16, seed=5, cache_dir=str(tmp_path))
    )
    assert torch.equal(d.train_x, x[:30]) and torch.equal(d.test_y, y[30:])
    d2 = load_image_data(
        DataConfig(source="shapes", train_size=30, test_size=20, image_size=16, seed=5, cache_dir=str(tmp_path))
    )
    assert torch.equal(d2.train_x, x[:30]) and len(list(tmp_path.glob("*.pt"))) == 1


def test_fingerprint_follows_names_sizes_and_mtimes_only(tmp_path):
    write_set(tmp_path / "set", train=3, test=2)
    root = tmp_path / "set"
    base = fingerprint(root)
    assert fingerprint(root) == base
    (root / "train" / "ant" / "im0.png").read_bytes()  # reading changes nothing
    (root / "train" / "empty").mkdir()  # nor does an empty folder
    assert fingerprint(root) == base
    extra = root / "test" / "bee" / "new.png"
    extra.write_bytes(b"x")
    assert fingerprint(root) != base
    extra.unlink()
    assert fingerprint(root) == base
    target = root / "train" / "cat" / "im1.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched
    touched = fingerprint(root)
    assert touched != base
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint(root) == base
    target.rename(root / "train" / "cat" / "im1b.png")  # renamed: same size and mtime
    assert fingerprint(root) != base
    (root / "train" / "cat" / "im1b.png").rename(target)
    data = target.read_bytes()
    target.write_bytes(data + b"\0")  # grown
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint(root) != base


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason="shared CIFAR-10 JPEG archive not present")
def test_shared_archive_read_while_listed_gives_the_two_pass_images(tmp_path):
    """Images read as the listing passes by (here the first 8 MiB of them, the rest by a second pass) give
    exactly the two-pass reader's slice."""
    two_pass = read_imagefolder(SHARED_CIFAR, None, 300, 100, 3)
    mixed = read_imagefolder(SHARED_CIFAR, None, 300, 100, 3, WholeSet(limit=8 * 2**20, again=True))
    assert "whole" not in mixed  # the whole set passed the limit while listed: only the slice
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(mixed[key], two_pass[key]), key


# ---------------------------------------------------------------- CPU seconds and threads per epoch

RECIPE = """
name = "speed"
seed = 1
[data]
source = "shapes"
train_size = 40
test_size = 20
image_size = 16
cache_dir = "{cache}"
[model]
name = "resnet18_cifar"
width = 0.125
[method]
name = "vanilla"
[train]
epochs = 2
batch_size = 20
{train}
"""


def recipe(tmp_path: Path, train: str = ""):
    from mixbench.recipe import load_recipe

    path = tmp_path / f"speed{len(train)}.toml"
    path.write_text(RECIPE.format(cache=tmp_path / "cache", train=train))
    return load_recipe(path)


@pytest.mark.parametrize("threads", [None, 1])
def test_metrics_rows_carry_cpu_seconds_and_threads(tmp_path, threads):
    from mixbench.engine import fit

    outer = torch.get_num_threads()
    before = 1 if threads is None else 2  # one thread keeps the test quick on a busy machine
    torch.set_num_threads(before)
    try:
        r = recipe(tmp_path, "" if threads is None else f"threads = {threads}")
        result = fit(r, out_root=tmp_path / "results", device=torch.device("cpu"))
        assert torch.get_num_threads() == before  # put back after the run
    finally:
        torch.set_num_threads(outer)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    want = before if threads is None else threads
    assert [row["threads"] for row in rows] == [want, want]
    assert all(isinstance(row["cpu_seconds"], float) and row["cpu_seconds"] > 0 for row in rows)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["threads"] == want
    assert summary["cpu_seconds"] == pytest.approx(sum(row["cpu_seconds"] for row in rows))


def test_threads_key_is_hashed_only_when_set_and_validated(tmp_path):
    plain = recipe(tmp_path)
    assert not any(line.startswith("threads") for line in plain.to_toml().splitlines())
    assert recipe(tmp_path, "log_every = 50").run_id() == plain.run_id()
    assert recipe(tmp_path, "threads = 2").run_id() != plain.run_id()
    with pytest.raises(RecipeError, match=r"\[train\]\.threads: expected an integer >= 1, got 0"):
        recipe(tmp_path, "threads = 0")
    with pytest.raises(RecipeError, match=r"\[train\]\.threads: expected an integer"):
        recipe(tmp_path, 'threads = "many"')
