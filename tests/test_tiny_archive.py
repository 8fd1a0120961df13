"""Tiny-ImageNet read straight from its .tar/.tar.gz: the same images as the extracted folder, only the chosen
members read, grayscale JPEGs as RGB, broken archives as one sentence, and the uint8 cache keyed by the file."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixbench.data import DataConfig, load_image_data
from mixbench.data.sources import data_facts, read_tiny_imagenet
from mixbench.errors import UserError

SHARED_TINY = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet-200.tar.gz"
WNIDS = ("n02", "n01", "n03")  # wnids.txt order is not class order: classes are sorted


def write_tiny(root: Path, per_class: int = 4, val_per_class: int = 2, side: int = 64, seed: int = 0) -> Path:
    """A small Tiny-ImageNet-200 tree at ``root/tiny-imagenet-200``: JPEG train images (one grayscale per set),
    a PNG among them, the flat val/images with val_annotations.txt; returns the tiny-imagenet-200 folder."""
    rng = np.random.default_rng(seed)
    top = root / "tiny-imagenet-200"
    (top / "val" / "images").mkdir(parents=True)
    (top / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (top / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in WNIDS))
    for c, wnid in enumerate(WNIDS):
        images = top / "train" / wnid / "images"
        images.mkdir(parents=True)
        (top / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for k in range(per_class):
            arr = np.clip(rng.normal(60 * c + 40, 30, (side, side, 3)), 0, 255).astype(np.uint8)
            img = Image.fromarray(arr)
            if c == 0 and k == 1:
                img = img.convert("L")  # about 2% of the real set are grayscale JPEGs
            img.save(images / f"{wnid}_{k}.JPEG", format="PNG" if (c, k) == (2, 0) else "JPEG")
    lines = []
    for k in range(val_per_class * len(WNIDS)):
        wnid = WNIDS[k % len(WNIDS)]
        arr = np.clip(rng.normal(60 * WNIDS.index(wnid) + 40, 30, (side, side, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        if k == 4:
            img = img.convert("L")
        img.save(top / "val" / "images" / f"val_{k}.JPEG", format="JPEG")
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t{side - 1}\t{side - 1}")
    (top / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return top


def pack(top: Path, archive: Path, wrapped: bool = True) -> Path:
    """``top`` as a tar(.gz) archive, with ``tiny-imagenet-200/`` as its top folder or with none."""
    mode = "w:gz" if archive.name.endswith(".gz") else "w"
    with tarfile.open(archive, mode) as tar:
        if wrapped:
            tar.add(top, arcname=top.name)
        else:
            for p in sorted(top.iterdir()):
                tar.add(p, arcname=p.name)
    return archive


def tiny_archive(tmp_path: Path, **kw) -> Path:
    """A synthetic tiny-imagenet-200.tar.gz in ``tmp_path`` (the tree is written beside it)."""
    return pack(write_tiny(tmp_path / "tree", **kw), tmp_path / "tiny-imagenet-200.tar.gz")


@pytest.mark.parametrize(("name", "wrapped"), [("t.tar.gz", True), ("t.tar", False)])
def test_archive_reads_the_same_images_as_the_folder(tmp_path, name, wrapped):
    top = write_tiny(tmp_path / "tree")
    archive = pack(top, tmp_path / name, wrapped)
    a = read_tiny_imagenet(top, None, None, None, 0)
    b = read_tiny_imagenet(archive, None, None, None, 0)
    c = read_tiny_imagenet(tmp_path / "tree", None, None, None, 0)  # the folder that holds tiny-imagenet-200/
    assert a["classes"] == b["classes"] == c["classes"] == sorted(WNIDS)
    assert a["train_x"].shape == (12, 3, 64, 64) and a["test_x"].shape == (6, 3, 64, 64)
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]), key
    assert a["test_y"].tolist() == [1, 0, 2, 1, 0, 2]  # val_annotations order, wnids sorted
    gray = b["train_x"][int((b["train_y"] == 1).nonzero()[1])]  # n02's image 1 was saved grayscale: R = G = B
    assert gray.shape == (3, 64, 64) and torch.equal(gray[0], gray[1]) and torch.equal(gray[0], gray[2])
    expected = np.asarray(Image.open(top / "train" / "n01" / "images" / "n01_0.JPEG").convert("RGB"))
    assert torch.equal(b["train_x"][0], torch.from_numpy(expected.copy()).permute(2, 0, 1))


def test_only_the_chosen_members_are_read_in_archive_order(tmp_path, monkeypatch):
    archive = tiny_archive(tmp_path, per_class=6)
    read: list[tuple[str, int]] = []
    original = tarfile.TarFile.extractfile

    def spy(self, member):
        read.append((member.name, member.offset_data))
        return original(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", spy)
    d = read_tiny_imagenet(archive, 32, 6, 3, seed=1)
    assert d["train_x"].shape == (6, 3, 32, 32) and d["test_x"].shape == (3, 3, 32, 32)
    assert torch.bincount(d["train_y"]).tolist() == [2, 2, 2] and sorted(d["test_y"].tolist()) == [0, 1, 2]
    texts = [n for n, _ in read if n.endswith(".txt")]
    images = [(n, off) for n, off in read if not n.endswith(".txt")]
    assert sorted(texts) == ["tiny-imagenet-200/val/val_annotations.txt", "tiny-imagenet-200/wnids.txt"]
    assert len(images) == 9  # 6 train + 3 val of 18 + 6: nothing else is read
    train = [off for n, off in images if "/train/" in n]
    assert train == sorted(train)  # one forward pass through the (gzip) stream per split


def test_same_subset_from_archive_and_folder(tmp_path):
    top = write_tiny(tmp_path / "tree", per_class=6)
    archive = pack(top, tmp_path / "t.tar.gz")
    a = read_tiny_imagenet(top, None, 9, 4, seed=3)
    b = read_tiny_imagenet(archive, None, 9, 4, seed=3)
    assert torch.equal(a["train_x"], b["train_x"]) and torch.equal(a["test_y"], b["test_y"])


def test_broken_archives_are_one_sentence(tmp_path):
    good = tiny_archive(tmp_path).read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good[: len(good) // 2])
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive at all" * 10)
    for bad in (cut, junk):
        with pytest.raises(UserError) as e:
            read_tiny_imagenet(bad, None, None, None, 0)
        msg = str(e.value)
        assert msg.startswith("[data].root:") and str(bad) in msg and "\n" not in msg
    with pytest.raises(UserError, match="does not exist"):
        read_tiny_imagenet(tmp_path / "missing.tar.gz", None, None, None, 0)


def test_archive_without_metadata_or_with_a_missing_val_image(tmp_path):
    top = write_tiny(tmp_path / "tree")
    (top / "wnids.txt").unlink()
    with pytest.raises(UserError, match="wnids.txt"):
        read_tiny_imagenet(pack(top, tmp_path / "a.tar.gz"), None, None, None, 0)
    top = write_tiny(tmp_path / "tree2")
    (top / "val" / "images" / "val_3.JPEG").unlink()
    with pytest.raises(UserError, match="val_3.JPEG"):
        read_tiny_imagenet(pack(top, tmp_path / "b.tar.gz"), None, None, None, 0)
    with pytest.raises(UserError, match="val_3.JPEG"):
        read_tiny_imagenet(top, None, None, None, 0)


def test_load_image_data_caches_an_archive_by_its_fingerprint(tmp_path, monkeypatch):
    archive = tiny_archive(tmp_path)
    cfg = DataConfig(source="tiny-imagenet", root=str(archive), train_size=6, test_size=3,
                     cache_dir=str(tmp_path / "cache"))
    first = load_image_data(cfg)
    assert first.classes == sorted(WNIDS) and first.train_x.shape == (6, 3, 64, 64)
    import mixbench.data.sources as sources

    def boom(*a, **k):
        raise AssertionError("read the archive again")

    monkeypatch.setattr(sources, "_tiny_archive", boom)
    assert torch.equal(load_image_data(cfg).train_x, first.train_x)  # from the cache
    monkeypatch.undo()
    os.utime(archive, ns=(1_000_000_000, 1_000_000_000))  # a new mtime: another fingerprint, read again
    monkeypatch.setattr(sources, "_tiny_archive", boom)
    with pytest.raises(AssertionError, match="again"):
        load_image_data(cfg)
    facts = data_facts("tiny-imagenet", 32, 6, 3)
    assert (facts.classes, facts.train, facts.test, facts.side) == (200, 6, 3, 32)


@pytest.mark.skipif(not SHARED_TINY.is_file(), reason="shared Tiny-ImageNet archive not present")
def test_shared_tiny_imagenet_archive_slice(tmp_path):
    d = load_image_data(DataConfig(source="tiny-imagenet", root=str(SHARED_TINY), train_size=400, test_size=200,
                                   cache_dir=str(tmp_path)))
    assert len(d.classes) == 200 and d.classes[0] == "n01443537"
    assert d.train_x.shape == (400, 3, 64, 64) and d.test_x.shape == (200, 3, 64, 64)
    assert torch.bincount(d.train_y).tolist() == [2] * 200 and torch.bincount(d.test_y).tolist() == [1] * 200

