"""CIFAR-10-C-style corruptions: identity at severity 0, monotone severities, determinism, references, evaluator."""

from __future__ import annotations

import colorsys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mixbench.data.shapes import generate
from mixbench.evaluate.base import EVALUATORS, EvalContext
from mixbench.evaluate.corruptions import (
    CORRUPTIONS,
    Corruptions,
    corrupt,
    corruption_seed,
    hsv_to_rgb,
    rgb_to_hsv,
)
from mixbench.models import build_model

NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")
# Severities along which the distance to the clean image grows. Hendrycks' saturate has two legs: severities 1-2
# desaturate (S x .3, then x .1: further from the image), 3-5 saturate (S x 1.5, x 2 + .1, x 2.5 + .2); severity 3
# is closer to the clean image than severity 2, so it is monotone within each leg, not across them.
LEGS = {"saturate": ((0, 1, 2), (0, 3, 4, 5))}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    x, _ = generate(16, 32, 0)
    return x


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_and_required_names():
    assert {"gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "brightness", "contrast",
            "pixelate", "defocus_blur", "saturate"} <= set(CORRUPTIONS)
    assert list(CORRUPTIONS)[:8] == ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur",
                                     "gaussian_blur", "brightness", "contrast", "pixelate"]  # seeds kept
    assert EVALUATORS.get("corruptions") is Corruptions
    for c in CORRUPTIONS.values():
        assert len(c.params) == 5 and c.differs, c.name
    assert "generated on the device" in Corruptions.protocol and "no CIFAR-C files offline" in Corruptions.protocol


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_zero_is_identity(images, name):
    assert torch.equal(corrupt(images, name, 0, gen()), images)
    x = images.float() / 255
    assert torch.equal(CORRUPTIONS[name].apply(x, 0, gen()), x)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_grows_and_output_is_uint8(images, name):
    dist = []
    for s in range(6):
        out = corrupt(images, name, s, gen(1))
        assert out.dtype == torch.uint8 and out.shape == images.shape
        y = CORRUPTIONS[name].apply(images.float() / 255, s, gen(1))
        assert y.min() >= 0 and y.max() <= 1
        dist.append((out.float() - images.float()).abs().mean().item())
    assert dist[0] == 0 and all(d > 0 for d in dist[1:]), dist
    for leg in LEGS.get(name, ((0, 1, 2, 3, 4, 5),)):
        assert all(dist[a] <= dist[b] for a, b in zip(leg, leg[1:], strict=False)), (name, leg, dist)
    if name in LEGS:  # the legs are real: the first severity of the second leg is closer than the end of the first
        assert dist[LEGS[name][1][1]] < dist[LEGS[name][0][-1]], dist


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_same_seed_same_images(images, name):
    assert torch.equal(corrupt(images, name, 3, gen(5)), corrupt(images, name, 3, gen(5)))
    if name in NOISE:
        assert not torch.equal(corrupt(images, name, 3, gen(5)), corrupt(images, name, 3, gen(6)))


def test_bad_severity_rejected(images):
    for bad in (-1, 6, 2.0, True):
        with pytest.raises(ValueError):
            CORRUPTIONS["contrast"].apply(images.float() / 255, bad, gen())
    with pytest.raises(KeyError):
        corrupt(images, "fog", 1, gen())


def test_noise_statistics():
    x = torch.full((4, 3, 64, 64), 0.5)
    n = CORRUPTIONS["gaussian_noise"].apply(x, 5, gen()) - x
    assert abs(n.std().item() - 0.10) < 0.005 and abs(n.mean().item()) < 0.005
    s = CORRUPTIONS["shot_noise"].apply(x, 5, gen())  # Poisson(25) / 50: mean .5, std sqrt(25)/50 = .1
    assert abs(s.mean().item() - 0.5) < 0.01 and abs(s.std().item() - 0.1) < 0.005
    p = CORRUPTIONS["impulse_noise"].apply(x, 5, gen())
    assert abs((p == 0).float().mean().item() - 0.035) < 0.005
    assert abs((p == 1).float().mean().item() - 0.035) < 0.005
    assert torch.all((p == 0) | (p == 1) | (p == 0.5))


def test_gaussian_blur_matches_scipy(images):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = images[:4].double() / 255
    for s, sigma in enumerate((0.4, 0.6, 0.7, 0.8, 1.0), 1):
        ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        got = CORRUPTIONS["gaussian_blur"].apply(x.float(), s, gen())
        assert np.abs(got.numpy() - np.clip(ref, 0, 1)).max() < 1e-5


def test_defocus_blur_matches_reference(images):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = images[:4].double().numpy() / 255
    for s, (radius, alias) in enumerate(CORRUPTIONS["defocus_blur"].params, 1):
        grid = np.arange(-8, 9)
        xx, yy = np.meshgrid(grid, grid)
        disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
        disk /= disk.sum()
        g = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * alias**2))
        g /= g.sum()
        kernel = ndimage.correlate(disk, np.outer(g, g), mode="mirror")  # cv2.GaussianBlur 3x3, REFLECT_101
        ref = np.stack([[ndimage.correlate(ch, kernel, mode="mirror") for ch in img] for img in x])
        got = CORRUPTIONS["defocus_blur"].apply(torch.from_numpy(x).float(), s, gen())
        assert np.abs(got.numpy() - np.clip(ref, 0, 1)).max() < 1e-5, s


def test_pixelate_matches_pillow(images):
    image_mod = pytest.importorskip("PIL.Image")
    for s, c in enumerate(CORRUPTIONS["pixelate"].params, 1):
        got = corrupt(images[:4], "pixelate", s, gen())
        for i in range(4):
            pil = image_mod.fromarray(images[i].permute(1, 2, 0).numpy())
            pil = pil.resize((int(32 * c), int(32 * c)), image_mod.BOX).resize((32, 32), image_mod.BOX)
            ref = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
            assert (got[i].int() - ref.int()).abs().max() <= 1, (s, i)


def test_brightness_matches_hsv(images):
    x = images[:2].float() / 255
    x[0, :, 0, 0] = 0.0  # a black pixel
    for s, c in enumerate(CORRUPTIONS["brightness"].params, 1):
        got = CORRUPTIONS["brightness"].apply(x, s, gen())
        for idx in ((0, 0, 0), (0, 5, 7), (1, 13, 20), (1, 31, 31), (0, 16, 2)):
            n, i, j = idx
            h, sat, v = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
            ref = colorsys.hsv_to_rgb(h, sat, min(v + c, 1.0))
            assert torch.allclose(got[n, :, i, j], torch.tensor(ref), atol=1e-5), (s, idx)


def test_rgb_hsv_round_trip_matches_colorsys():
    x = torch.rand(3, 3, 6, 6, generator=gen(2))
    x[0, :, 0, 0] = 0.0  # black
    x[0, :, 0, 1] = 0.4  # grey: hue 0, saturation 0
    x[1, :, 2, 2] = torch.tensor([0.3, 0.3, 0.1])  # red = green maximum
    x[1, :, 3, 3] = torch.tensor([0.2, 0.5, 0.5])  # green = blue maximum
    x[2, :, 4, 4] = torch.tensor([0.9, 0.1, 0.85])  # hue just below 1
    hsv = rgb_to_hsv(x)
    ref = torch.tensor([[colorsys.rgb_to_hsv(*x[n, :, i, j].tolist()) for j in range(6)] for n in range(3)
                        for i in range(6)]).view(3, 6, 6, 3).permute(0, 3, 1, 2)
    assert torch.allclose(hsv, ref, atol=1e-6)
    assert torch.allclose(hsv_to_rgb(hsv), x, atol=1e-6)
    back = torch.tensor([[colorsys.hsv_to_rgb(*hsv[n, :, i, j].tolist()) for j in range(6)] for n in range(3)
                         for i in range(6)]).view(3, 6, 6, 3).permute(0, 3, 1, 2)
    assert torch.allclose(hsv_to_rgb(hsv), back, atol=1e-6)


def test_saturate_matches_hsv(images):
    x = images[:2].float() / 255
    x[0, :, 0, 0] = 0.5  # grey: hue 0, so an additive c1 tints it red (skimage's behaviour)
    for s, (a, b) in enumerate(CORRUPTIONS["saturate"].params, 1):
        got = CORRUPTIONS["saturate"].apply(x, s, gen())
        for n, i, j in ((0, 0, 0), (0, 5, 7), (1, 13, 20), (1, 31, 31), (0, 16, 2)):
            h, sat, v = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
            ref = colorsys.hsv_to_rgb(h, min(max(sat * a + b, 0.0), 1.0), v)
            assert torch.allclose(got[n, :, i, j], torch.tensor(ref), atol=1e-5), (s, n, i, j)
    assert CORRUPTIONS["saturate"].params == ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2))
    grey = CORRUPTIONS["saturate"].apply(torch.full((1, 3, 2, 2), 0.5), 5, gen())
    assert torch.allclose(grey[0, :, 0, 0], torch.tensor([0.5, 0.4, 0.4]))  # S = 0.2 at hue 0
    # value (the channel maximum) is kept at every severity
    for s in range(1, 6):
        assert torch.allclose(CORRUPTIONS["saturate"].apply(x, s, gen()).amax(1), x.amax(1), atol=1e-6)


def test_contrast_matches_formula(images):
    x = images.float() / 255
    m = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(CORRUPTIONS["contrast"].apply(x, 5, gen()), (x - m) * 0.15 + m, atol=1e-6)


def test_matches_imagecorruptions_if_installed(images):
    ic = pytest.importorskip("imagecorruptions")
    x = images[:2]
    for name in ("contrast", "brightness"):
        for s in (1, 3, 5):
            got = corrupt(x, name, s, gen()).int()
            for i in range(2):
                ref = np.asarray(ic.corrupt(x[i].permute(1, 2, 0).numpy(), corruption_name=name, severity=s))
                # imagecorruptions carries ImageNet-C constants; only check the sign of the change agrees
                assert ref.shape[:2] == (32, 32)
                assert got[i].float().mean().sub(x[i].float().mean()).sign() == \
                    np.sign(ref.astype(np.float64).mean() - x[i].float().mean().item())


def test_seeds_distinct():
    seeds = {corruption_seed(0, i, s) for i in range(len(CORRUPTIONS)) for s in range(1, 6)}
    assert len(seeds) == 5 * len(CORRUPTIONS)


def test_evaluator_on_tiny_model():
    torch.manual_seed(0)
    x, y = generate(24, 32, 0)
    model = build_model("resnet10_cifar", 10, width=0.125)
    data = SimpleNamespace(test_x=x, test_y=y, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), batch=10)
    ctx = EvalContext(device=torch.device("cpu"))
    ev = Corruptions()
    out = ev(model, data, ctx)
    keys = {f"corruption_top1@{n}/{s}" for n in CORRUPTIONS for s in range(1, 6)}
    assert set(out) == keys | {"mca"}
    assert 0 <= out["mca"] <= 100 and all(0 <= v <= 100 for v in out.values())
    assert out["mca"] == pytest.approx(sum(out[k] for k in keys) / len(keys))
    assert ev(model, data, ctx) == out  # seeded: repeatable
    method = SimpleNamespace(classifiers=lambda: {"": model, "other": None})
    assert Corruptions(batch=24)(method, data, ctx).keys() == out.keys()
    small = Corruptions(names=["contrast"], severities=[1, 5], seed=3)
    assert set(small(model, data, ctx)) == {"mca", "corruption_top1@contrast/1", "corruption_top1@contrast/5"}
    assert "seed 3" in small.protocol and "contrast" in small.protocol
