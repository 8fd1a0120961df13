"""Self-supervised view augmentation (``mixbench.data.views``) against torchvision v2, on the CPU.

Per-op agreement uses torchvision's float path on x / 255 (its uint8 path rounds after every op; ours
never rounds), so "agreement" is float tolerance on [0, 1]: ours / 255 vs torchvision.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torchvision.transforms import InterpolationMode

from mixbench.data.batches import ViewsBatch
from mixbench.data.gpu_loader import Augment, Shard, Views, ViewsLoader
from mixbench.data.views import (
    PRESETS,
    VIEW_FIELDS,
    ViewParams,
    ViewSpec,
    ViewSpecError,
    adjust_hue,
    apply_view,
    color_jitter,
    draw_view_params,
    gaussian_blur,
    grayscale,
    local_view,
    make_views,
    multicrop,
    resized_crop,
    resolve_views,
    spec_dict,
    view_problems,
)

TOL = 2e-6  # on [0, 1]: float32 rounding of differently ordered sums
MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def images(n: int = 6, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def col(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def fixed_params(n: int, h: int, w: int, **kw) -> ViewParams:
    """Parameters doing nothing (full-image box, no op), with ``kw`` replacing some."""
    base = dict(top=torch.zeros(n), left=torch.zeros(n), height=torch.full((n,), float(h)),
                width=torch.full((n,), float(w)), flip=torch.zeros(n, dtype=torch.bool),
                jitter=torch.zeros(n, dtype=torch.bool), factors=col([[1.0, 1.0, 1.0, 0.0]] * n),
                order=torch.arange(4).repeat(n, 1), gray=torch.zeros(n, dtype=torch.bool),
                blur=torch.zeros(n, dtype=torch.bool), sigma=torch.ones(n), solarize=torch.zeros(n, dtype=torch.bool))
    return ViewParams(**{**base, **kw})


def close(ours: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> None:
    """``ours`` in [0, 255] against torchvision's float result in [0, 1]."""
    assert ours.shape == ref.shape
    err = (ours / 255 - ref).abs().max().item()
    assert err <= tol, err


# ------------------------------------------------------------------------- per-op agreement, fixed parameters


BOXES = [  # (top, left, height, width) on a 24 × 32 image
    (3, 2, 9, 11), (0, 0, 24, 32), (5, 7, 19, 13), (1, 1, 22, 30), (0, 20, 24, 12), (23, 31, 1, 1)]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("side", [16, 28])
def test_resized_crop_matches_torchvision(interpolation, side):
    x = images(len(BOXES), 24, 32)
    t, lft, h, w = (col(v) for v in zip(*BOXES, strict=True))
    ours = resized_crop(x, t, lft, h, w, side, interpolation)
    for i, (bt, bl, bh, bw) in enumerate(BOXES):
        upscale = bh <= side and bw <= side
        for antialias in (False, True):
            if interpolation == "bicubic" and not antialias:
                continue  # ours is the antialias (PIL, a = -0.5) filter
            if antialias and not upscale:
                continue  # downscaling: no antialias widening (documented)
            ref = TF.resized_crop(x[i].float() / 255, bt, bl, bh, bw, [side, side], MODES[interpolation],
                                  antialias=antialias)
            close(ours[i], ref.clamp(0, 1))


def test_flip_matches_torchvision_and_is_folded_into_the_crop():
    x = images(4)
    box = [col([2.0] * 4), col([3.0] * 4), col([20.0] * 4), col([25.0] * 4)]
    flip = torch.tensor([True, False, True, False])
    ours = resized_crop(x, *box, 32, "bicubic", flip)
    for i in range(4):
        ref = TF.resized_crop(x[i].float() / 255, 2, 3, 20, 25, [32, 32], InterpolationMode.BICUBIC).clamp(0, 1)
        close(ours[i], TF.horizontal_flip(ref) if flip[i] else ref)


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_each_jitter_op_matches_torchvision_with_per_image_factors(op):
    x = images(5)
    values = {"brightness": [0.0, 0.6, 1.0, 1.4, 2.5], "contrast": [0.0, 0.6, 1.0, 1.4, 2.5],
              "saturation": [0.0, 0.6, 1.0, 1.4, 2.5], "hue": [-0.5, -0.1, 0.0, 0.23, 0.5]}[op]
    k = ["brightness", "contrast", "saturation", "hue"].index(op)
    factors = col([[1.0, 1.0, 1.0, 0.0]] * 5)
    factors[:, k] = col(values)
    order = torch.tensor([[k] + [j for j in range(4) if j != k]] * 5)
    ours = color_jitter(x.float(), factors, order, torch.ones(5, dtype=torch.bool), with_hue=op == "hue")
    fn = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
          "saturation": TF.adjust_saturation, "hue": TF.adjust_hue}[op]
    for i, v in enumerate(values):
        close(ours[i], fn(x[i].float() / 255, v))


def test_hue_alone_matches_torchvision():
    x = images(4)
    shifts = [0.1, -0.3, 0.5, -0.5]
    ours = adjust_hue(x.float(), col(shifts))
    for i, s in enumerate(shifts):
        close(ours[i], TF.adjust_hue(x[i].float() / 255, s))


def test_color_jitter_runs_each_images_own_order_as_torchvision_would():
    n = 24
    x = images(n, seed=3)
    g = torch.Generator().manual_seed(1)
    order = torch.rand(n, 4, generator=g).argsort(dim=1)
    u = torch.rand(n, 4, generator=g)
    factors = torch.stack([0.2 + 1.6 * u[:, 0], 0.2 + 1.6 * u[:, 1], 0.2 + 1.6 * u[:, 2], -0.4 + 0.8 * u[:, 3]], 1)
    apply = torch.rand(n, generator=g) < 0.8
    ours = color_jitter(x.float(), factors, order, apply)
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(n):
        ref = x[i].float() / 255
        if apply[i]:
            for j in order[i].tolist():
                ref = fns[j](ref, float(factors[i, j]))
        close(ours[i], ref, 1e-5)
    assert len({tuple(o) for o in order.tolist()}) > 12  # the orders really differ


def test_one_channel_images_follow_torchvision():
    """torchvision leaves a 1-channel image's saturation and hue alone; contrast uses its own mean."""
    x = images(4)[:, :1]
    factors = col([[0.5, 1.7, 0.3, 0.2], [1.2, 0.4, 2.0, -0.4]] * 2)
    order = torch.tensor([[3, 2, 1, 0], [0, 1, 2, 3]] * 2)
    ours = color_jitter(x.float(), factors, order, torch.ones(4, dtype=torch.bool))
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(4):
        ref = x[i].float() / 255
        for j in order[i].tolist():
            ref = fns[j](ref, float(factors[i, j]))
        close(ours[i], ref)
    out = make_views(images(3)[:, :1], PRESETS["symmetric"][0], torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 32, 32)


def test_grayscale_matches_torchvision():
    x = images(3)
    close(grayscale(x.float()).expand(-1, 3, -1, -1), TF.rgb_to_grayscale(x.float() / 255, num_output_channels=3))


@pytest.mark.parametrize("kernel", [3, 5, 13])
def test_gaussian_blur_matches_torchvision_with_per_image_sigma(kernel):
    x = images(4, 20, 24)
    sigmas = [0.1, 0.7, 1.3, 2.0]
    ours = gaussian_blur(x.float(), col(sigmas), kernel)
    for i, s in enumerate(sigmas):
        close(ours[i], TF.gaussian_blur(x[i].float() / 255, [kernel, kernel], [s, s]))


def test_grayscale_and_solarize_through_apply_view_match_torchvision():
    x = images(4)
    on = torch.tensor([True, False, True, False])
    spec = ViewSpec(gray_p=1.0, solarize_p=1.0, solarize_threshold=100.0, flip_p=0.0)
    gray = apply_view(x, spec, fixed_params(4, 32, 32, gray=on))
    sol = apply_view(x, spec, fixed_params(4, 32, 32, solarize=on))
    for i in range(4):
        img = x[i].float() / 255
        close(gray[i], TF.rgb_to_grayscale(img, num_output_channels=3) if on[i] else img)
        close(sol[i], TF.solarize(img, 100 / 255) if on[i] else img)


def test_the_whole_pipeline_matches_torchvision_per_image():
    """crop → jitter (own order) → grey → blur → solarise → flip, with every parameter fixed per image
    (output 36 px from 32 px images: every crop is upsampled, where antialias is moot)."""
    n, side = 12, 36
    x = images(n, 32, 32, seed=7)
    g = torch.Generator().manual_seed(2)
    spec = ViewSpec(size=side, interpolation="bicubic", jitter_p=1, brightness=0.4, contrast=0.4, saturation=0.4,
                    hue=0.1, gray_p=0.5, blur_p=0.5, blur_kernel=5, solarize_p=0.5)
    p = draw_view_params(spec, n, 32, 32, g, "cpu")
    ours = apply_view(x, spec, p)
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(n):
        t, lft, h, w = (int(v[i]) for v in (p.top, p.left, p.height, p.width))
        ref = TF.resized_crop(x[i].float() / 255, t, lft, h, w, [side, side], InterpolationMode.BICUBIC).clamp(0, 1)
        if p.jitter[i]:
            for j in p.order[i].tolist():
                ref = fns[j](ref, float(p.factors[i, j]))
        if p.gray[i]:
            ref = TF.rgb_to_grayscale(ref, num_output_channels=3)
        if p.blur[i]:
            s = float(p.sigma[i])
            ref = TF.gaussian_blur(ref, [5, 5], [s, s])
        if p.solarize[i]:
            ref = TF.solarize(ref, 128 / 255)
        if p.flip[i]:
            ref = TF.horizontal_flip(ref)
        close(ours[i], ref, 2e-5)


# ------------------------------------------------------------------------------------- RandomResizedCrop draws


@pytest.mark.parametrize(("scale", "ratio"), [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.3, 0.5), (0.5, 2.0)),
                                              ((0.05, 0.14), (1.0, 1.0))])
def test_rrc_boxes_respect_scale_and_ratio(scale, ratio):
    side, n = 400, 20000
    spec = ViewSpec(scale=scale, ratio=ratio)
    p = draw_view_params(spec, n, side, side, torch.Generator().manual_seed(0), "cpu")
    t, lft, h, w = p.top, p.left, p.height, p.width
    assert bool(((t >= 0) & (lft >= 0) & (t + h <= side) & (lft + w <= side) & (h >= 1) & (w >= 1)).all())
    assert bool((t == t.round()).all() and (h == h.round()).all())
    area = h * w / side**2  # rounding w and h moves the area by at most (w + h)/2 + 1/4 pixels
    slack = ((w + h) / 2 + 0.25) / side**2
    assert bool(((area >= scale[0] - slack) & (area <= scale[1] + slack)).all())
    log_r = torch.log(w / h)
    r_slack = 0.5 / h + 0.5 / w + 1e-6
    assert bool(((log_r >= math.log(ratio[0]) - r_slack) & (log_r <= math.log(ratio[1]) + r_slack)).all())
    assert float(area.max() - area.min()) > 0.5 * (scale[1] - scale[0])  # the range is used, not one value
    corners = torch.stack([t / (side - h + 1).clamp(min=1), lft / (side - w + 1).clamp(min=1)])
    assert 0.45 < float(corners.mean()) < 0.55  # corners uniform over the valid positions


def test_rrc_draws_follow_torchvision_sampling_including_the_fallback():
    """Mean crop area and fallback rate match torchvision's RandomResizedCrop on a 32 × 20 image,
    where wide boxes rarely fit and the centre-crop fallback is common."""
    h, w, n = 20, 32, 4000
    scale, ratio = (0.5, 1.0), (1.5, 3.0)
    p = draw_view_params(ViewSpec(scale=scale, ratio=ratio), n, h, w, torch.Generator().manual_seed(0), "cpu")
    fallback = (p.height == h) & (p.width == round(h * 3.0)) if round(h * 3.0) <= w else None
    torch.manual_seed(0)
    rrc = T.RandomResizedCrop(8, scale=scale, ratio=ratio)
    ref = [rrc.make_params([torch.empty(3, h, w)]) for _ in range(n)]
    ref_area = sum(r["height"] * r["width"] for r in ref) / (n * h * w)
    ours_area = float((p.height * p.width).mean()) / (h * w)
    assert abs(ours_area - ref_area) < 0.02, (ours_area, ref_area)
    # fallback: the largest centred box with ratio clamped to 3.0 > 32/20 → full width, h = round(32/3)
    ref_fb = sum(r["height"] == round(w / 1.5) and r["width"] == w and r["top"] == (h - round(w / 1.5)) // 2
                 for r in ref) / n
    assert fallback is None
    ours_fb = float(((p.width == w) & (p.height == round(w / 1.5)) & (p.top == (h - round(w / 1.5)) // 2))
                    .float().mean())
    assert abs(ours_fb - ref_fb) < 0.03, (ours_fb, ref_fb)


# ------------------------------------------------------------------------------------- randomness and sharding


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_identity_at_zero_strength(interpolation):
    x = images(5, 24, 24)
    zero = ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, interpolation=interpolation)
    assert torch.equal(make_views(x, zero, torch.Generator().manual_seed(0)), x.float())
    on_but_zero = ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, interpolation=interpolation, jitter_p=1.0,
                           gray_p=0.0, solarize_p=1.0, solarize_threshold=256.0)
    assert torch.equal(make_views(x, on_but_zero, torch.Generator().manual_seed(0)), x.float())


def test_per_image_parameters_differ_across_the_batch():
    spec = PRESETS["symmetric"][0]
    p = draw_view_params(spec, 64, 32, 32, torch.Generator().manual_seed(0), "cpu")
    assert len({tuple(o) for o in p.order.tolist()}) > 12
    assert len(set(p.factors[:, 0].tolist())) == 64 and len(set(p.sigma.tolist())) == 64
    assert len(set(zip(p.height.tolist(), p.width.tolist(), strict=True))) > 20
    for flags, prob in ((p.flip, 0.5), (p.jitter, 0.8), (p.gray, 0.2), (p.blur, 0.5)):
        assert 0 < int(flags.sum()) < 64 and abs(float(flags.float().mean()) - prob) < 0.2
    lo, hi = p.factors.amin(0), p.factors.amax(0)
    assert bool((lo >= col([0.0, 0.0, 0.0, -0.2])).all() and (hi <= col([1.8, 1.8, 1.8, 0.2])).all())


def test_same_seed_same_views_and_fixed_draw_size():
    x = images(8)
    a, b = PRESETS["asymmetric"]
    out = [make_views(x, b, torch.Generator().manual_seed(s)) for s in (4, 4, 5)]
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], out[2])
    assert out[0].dtype == torch.float32 and float(out[0].min()) >= 0 and float(out[0].max()) <= 255
    # the draw does not depend on the spec's values: a later draw sees the same generator state
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    make_views(x, a, g1)
    make_views(x, ViewSpec(scale=(1.0, 1.0), flip_p=0.0, interpolation="bilinear"), g2)
    assert torch.equal(g1.get_state(), g2.get_state())


@pytest.mark.parametrize("world_size", [2, 3])
def test_a_shard_is_the_rows_of_the_global_batch(world_size):
    x = images(9)
    spec = PRESETS["symmetric"][0]
    g_whole = torch.Generator().manual_seed(6)
    whole = make_views(x, spec, g_whole)
    for r in range(world_size):
        lo, hi = r * 9 // world_size, (r + 1) * 9 // world_size
        g = torch.Generator().manual_seed(6)
        assert torch.equal(make_views(x[lo:hi], spec, g, Shard(lo, hi, 9)), whole[lo:hi])
        assert torch.equal(g.get_state(), g_whole.get_state())
    with pytest.raises(ValueError, match="rows"):
        make_views(x[:3], spec, torch.Generator(), Shard(0, 4, 9))


# ------------------------------------------------------------------------------------------------ the loader


def loader(views, rank: int = 0, world_size: int = 1, n: int = 24, batch: int = 8) -> ViewsLoader:
    x = images(n, 16, 16, seed=11)
    y = torch.arange(n) % 3
    return ViewsLoader(x, y, batch, views=views, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                       generator=torch.Generator().manual_seed(3), rank=rank, world_size=world_size)


def test_views_loader_with_view_specs_and_multicrop():
    views = resolve_views("asymmetric", {"local": {"size_frac": 0.5}}, n_views=5) + (Augment("flip"),)
    ld = loader(views)
    steps = list(ld)
    assert len(steps) == 3 and ld.images_per_step == 8 * 6
    v = steps[0]
    assert isinstance(v, Views) and len(v.views) == 6
    assert [tuple(t.shape) for t in v.views] == [(8, 3, 16, 16)] * 2 + [(8, 3, 8, 8)] * 3 + [(8, 3, 16, 16)]
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in v.views)
    assert not torch.equal(v.views[0], v.views[1])
    parts = [list(loader(views, r, 2)) for r in range(2)]
    for step, full in enumerate(steps):
        for k, t in enumerate(full.views):
            assert torch.equal(torch.cat([p[step].views[k] for p in parts]), t)
        assert torch.equal(torch.cat([p[step].y for p in parts]), full.y)


def test_views_batch_takes_view_specs_and_checks_them():
    spec = ViewsBatch(PRESETS["asymmetric"])
    assert spec.views == PRESETS["asymmetric"]
    assert ViewsBatch([Augment("flip"), ViewSpec()]).views == (Augment("flip"), ViewSpec())
    with pytest.raises(ValueError, match="hue"):
        ViewsBatch((ViewSpec(hue=0.7),))
    with pytest.raises(ValueError, match="ViewSpec or Augment"):
        ViewsBatch(("rrc_flip",))


# ------------------------------------------------------------------------------------------------ presets


def test_presets_are_solo_learns_cifar_views():
    a0, a1 = PRESETS["asymmetric"]
    assert (a0.brightness, a0.contrast, a0.saturation, a0.hue, a0.jitter_p) == (0.4, 0.4, 0.2, 0.1, 0.8)
    assert (a0.gray_p, a0.flip_p, a0.blur_p, a0.solarize_p, a1.solarize_p, a0.scale) == (0.2, 0.5, 0, 0, 0.2,
                                                                                        (0.08, 1.0))
    s0, s1 = PRESETS["symmetric"]
    assert s0 == s1 and (s0.brightness, s0.contrast, s0.saturation, s0.hue) == (0.8, 0.8, 0.8, 0.2)
    assert (s0.jitter_p, s0.gray_p, s0.blur_p, s0.solarize_p) == (0.8, 0.2, 0.5, 0)
    assert a0.interpolation == s0.interpolation == "bicubic"
    assert ViewSpec().kernel_size(224) == 23 and ViewSpec().kernel_size(32) == 13 and ViewSpec().kernel_size(4) == 7
    assert set(VIEW_FIELDS) == set(ViewSpec.__dataclass_fields__)


def test_resolve_views_overrides_and_multicrop():
    a0, a1 = PRESETS["asymmetric"]
    assert resolve_views("asymmetric") == (a0, a1)
    assert resolve_views("asymmetric", [{}, {"solarize_p": 0.0}]) == (a0, a0)
    assert resolve_views("asymmetric", {"1": {"solarize_p": 0.0}}) == (a0, a0)
    got = resolve_views("symmetric", {"all": {"blur_p": 0.0, "scale": [0.2, 1.0]}, 0: {"blur_p": 1.0}})
    assert got[0].blur_p == 1.0 and got[1].blur_p == 0.0 and got[1].scale == (0.2, 1.0)
    views = resolve_views("asymmetric", {"local": {"size": 12}, "3": {"flip_p": 0.0}}, n_views=4)
    assert views[:2] == tuple(ViewSpec(**{**v.__dict__, "scale": (0.14, 1.0)}) for v in (a0, a1))
    assert views[2] == ViewSpec(**{**local_view(a0).__dict__, "size": 12})
    assert views[3].flip_p == 0.0 and views[3].size == 12 and views[3].scale == (0.05, 0.14)
    assert multicrop(a0, local_view(a0), 3) == (a0, a0) + (local_view(a0),) * 3
    assert a1.describe() == ("ViewSpec(interpolation='bicubic', jitter_p=0.8, brightness=0.4, contrast=0.4, "
                             "saturation=0.2, hue=0.1, gray_p=0.2, solarize_p=0.2)")
    assert spec_dict(a1)["scale"] == [0.08, 1.0] and ViewSpec(**spec_dict(a1)) == a1
    assert resolve_views("asymmetric", n_views=1) == (a0,)


@pytest.mark.parametrize(("preset", "overrides", "n_views", "needle"), [
    ("asymetric", None, 2, "unknown view preset 'asymetric' (did you mean 'asymmetric'?); valid presets: "
                           "asymmetric, symmetric"),
    ("asymmetric", {"1": {"solarise_p": 0}}, 2, "view 1: unknown field 'solarise_p' (did you mean 'solarize_p'?)"),
    ("asymmetric", {"0": {"hue": 0.9}}, 2, "view 0: hue: expected a strength in [0, 0.5]"),
    ("asymmetric", {"2": {"hue": 0.1}}, 2, "view 2: views are numbered 0 to 1"),
    ("asymmetric", {"locals": {}}, 2, "unknown view 'locals' (did you mean 'local'?)"),
    ("asymmetric", {"local": {}}, 2, "'local' names the local crops"),
    ("asymmetric", {"all": {"scale": [0.5, 0.1]}}, 2, "all views: scale: expected two numbers"),
    ("asymmetric", {"0": 3}, 2, "view 0: expected a table of field = value"),
    ("symmetric", {"1": {"blur_kernel": 31}}, 2, "view 1: blur_kernel: 31 is too large for a 8-pixel view"),
    ("asymmetric", "x", 2, "expected a table of view number"),
])
def test_view_problems_are_one_sentence_naming_the_key(preset, overrides, n_views, needle):
    kw = {"image_size": 8} if "too large" in needle else {}
    problems = view_problems(preset, overrides, n_views=n_views, **kw)
    assert len(problems) == 1 and needle in problems[0], problems
    assert "\n" not in problems[0]
    with pytest.raises(ViewSpecError) as err:
        resolve_views(preset, overrides, n_views=n_views, **kw)
    assert err.value.problems == problems


# ------------------------------------------------------------------------------------------------ fuzz

_any = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                 st.text(max_size=5), st.lists(st.floats(-2, 5), max_size=3),
                 st.tuples(st.integers(-3, 3), st.integers(-3, 3)),
                 st.dictionaries(st.text(max_size=3), st.none(), max_size=2))
_P = [0.0, 0.5, 1.0]
_VALID = {"size": [0, 12, 16], "size_frac": [0.5, 1.0], "scale": [(0.2, 1.0), [0.05, 0.14]],
          "ratio": [(1.0, 1.0), [0.5, 2.0]], "interpolation": ["bicubic", "bilinear"], "flip_p": _P, "jitter_p": _P,
          "brightness": [0, 0.4], "contrast": [0, 0.4], "saturation": [0.8], "hue": [0, 0.1, 0.5], "gray_p": _P,
          "blur_p": _P, "blur_sigma": [(0.1, 2.0), [1, 1]], "blur_kernel": [0, 3, 5], "solarize_p": _P,
          "solarize_threshold": [0, 128.0, 256]}
# mostly valid (field, value) pairs, some with any value, some with a misspelt field
_pairs = st.one_of(*(st.tuples(st.just(f), st.sampled_from(v)) for f, v in _VALID.items()),
                   st.tuples(st.sampled_from(sorted(_VALID)), _any),
                   st.tuples(st.sampled_from(["solarise_p", "", "scale "]), _any))
_tables = st.lists(_pairs, max_size=4).map(dict)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_kw=_tables,
       overrides=st.one_of(st.none(), _any, st.lists(_tables, max_size=3),
                           st.dictionaries(st.sampled_from(["0", "1", "2", "all", "local", "x", 0]),
                                           st.one_of(_tables, _tables, _any), max_size=3)),
       n_views=st.integers(-1, 5), preset=st.sampled_from(["asymmetric", "symmetric", "x"]))
def test_view_spec_validation_never_raises(spec_kw, overrides, n_views, preset):
    spec_kw = {k: v for k, v in spec_kw.items() if k in _VALID}
    problems = ViewSpec(**spec_kw).problems()
    assert all(isinstance(p, str) and p and "\n" not in p for p in problems)
    assert problems == [] or any(p.startswith(k) for p in problems for k in spec_kw)
    got = view_problems(preset, overrides, n_views=n_views, image_size=16)
    assert all(isinstance(p, str) and p and "\n" not in p for p in got)
    if not got:
        event("resolved")
        views = resolve_views(preset, overrides, n_views=n_views, image_size=16)
        assert len(views) == n_views and all(v.problems() == [] for v in views)
        x = images(2, 16, 16)
        for v in views:  # a valid spec runs
            out = make_views(x, v, torch.Generator().manual_seed(0))
            assert out.shape[:2] == (2, 3) and bool(torch.isfinite(out).all())
