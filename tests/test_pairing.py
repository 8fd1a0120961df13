"""``pairing`` of every mixer (permutation, derangement, reverse) and CutMix/ResizeMix's one-box copy.

π is a permutation of the batch; a derangement has no fixed point (n >= 2; n = 1 pairs the sample
with itself); reverse is timm's flip π(i) = N − 1 − i; y_b = y[π]. With one λ per batch, CutMix and
ResizeMix copy the box instead of blending through the mask: x̃, λ and M must equal the mask formula
x̃ = M ⊙ x + (1 − M) ⊙ x_b, λ = mean(M) bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbench.errors import RecipeError
from mixbench.mixing import FILE_MIXERS, MIXERS, MixRNG, build_mixer
from mixbench.mixing.base import PAIRINGS, derangement, draw_pairing, flip_index, masked_mix, sample_lambda
from mixbench.mixing.cutmix import box_mask, inside_box, rand_boxes
from mixbench.mixing.resizemix import paste_resized
from mixbench.models import build_model
from mixbench.recipe import load_recipe

CPU = torch.device("cpu")
N = 8


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet18_cifar", 10, width=0.125)


@pytest.fixture(scope="module")
def mixer_file(tmp_path_factory):
    """A mixer.pt as an AutoMix/SAMix run writes it (untrained Mixer), for SAMix^P."""
    from mixbench.methods.automix import MIXER_FILE_VERSION
    from mixbench.mixing.learned import MixBlock, encoder_state, stage_features
    from mixbench.models import build_backbone

    spec = {"name": "resnet18_cifar", "width": 0.125, "image_size": 32}
    backbone = build_backbone(spec["name"], width=spec["width"], image_size=32)
    channels = stage_features(backbone, torch.zeros(1, 3, 32, 32), 3).shape[1]
    block = MixBlock(channels)
    path = tmp_path_factory.mktemp("samix") / "mixer.pt"
    torch.save(
        {
            "kind": "mixbench-mixer",
            "version": MIXER_FILE_VERSION,
            "method": "samix",
            "mixer_config": dict(block.config),
            "mixer": block.state_dict(),
            "feature_stage": 3,
            "encoder_spec": spec,
            "encoder": encoder_state(backbone, 3),
        },
        path,
    )
    return path


def batch(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def make(name, pairing, model, mixer_file):
    params = {"pairing": pairing}
    if name == "switch":
        params["mixers"] = ["mixup", "cutmix", "fmix"]
    if name == "samixp":
        params["mixer_checkpoint"] = str(mixer_file)
    return build_mixer(name, params, model=model)


def assert_pairing(index, pairing, n):
    assert index.dtype == torch.int64 and sorted(index.tolist()) == list(range(n))
    if pairing == "derangement" and n >= 2:
        assert not (index == torch.arange(n)).any()
    if pairing == "reverse":
        assert torch.equal(index, torch.arange(n).flip(0))


# ---------------------------------------------------------------- every mixer, every pairing


@pytest.mark.parametrize("name", [e.name for e in MIXERS] + list(FILE_MIXERS))
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_every_mixer_pairs_as_asked(name, pairing, model, mixer_file):
    mixer = make(name, pairing, model, mixer_file)
    assert mixer.describe()["pairing"] == pairing
    rng = MixRNG(0, CPU)
    for seed in range(3):
        x, y = batch(seed=seed)
        out = mixer(x, y, rng)
        assert_pairing(out.index, pairing, N)
        assert torch.equal(out.y_a, y) and torch.equal(out.y_b, y[out.index])


def test_the_default_pairing_is_the_permutation_every_earlier_run_drew(model):
    """Default = "permutation": the same draw from the same generator as before the key existed."""
    x, y = batch()
    want = torch.randperm(N, generator=torch.Generator().manual_seed(5))
    assert torch.equal(draw_pairing(MixRNG(5, CPU), N, CPU), want)
    for name in ("mixup", "cutmix", "saliencymix", "puzzlemix"):  # no device draw before the pairing
        mixer = build_mixer(name, {}, model=model)
        assert mixer.pairing == "permutation"
        assert torch.equal(mixer(x, y, MixRNG(5, CPU)).index, want)


def test_the_default_goes_through_rng_permutation_so_a_pinned_generator_still_pins():
    class Pinned(MixRNG):  # as SSL's PinnedRNG: a given partner order
        def permutation(self, n, device):
            return flip_index(n, device)

    x, y = batch()
    for name in ("mixup", "cutmix", "fmix", "resizemix"):
        assert torch.equal(build_mixer(name, {})(x, y, Pinned(0, CPU)).index, flip_index(N, CPU))


def test_switch_pairing_reaches_every_child_unless_it_sets_its_own():
    sw = build_mixer(
        "switch", {"mixers": ["mixup", "cutmix"], "pairing": "reverse", "cutmix": {"pairing": "derangement"}}
    )
    assert [c.pairing for c in sw.children] == ["reverse", "derangement"]
    assert sw.describe()["pairing"] == "reverse" and sw.describe()["cutmix"]["pairing"] == "derangement"


def test_automix_and_samix_draw_both_pairings_as_asked():
    from mixbench.losses import LOSSES
    from mixbench.methods import METHODS, MethodContext, build_method

    for name in ("automix", "samix"):
        assert METHODS.entry(name).params["pairing"].default == "permutation"
        torch.manual_seed(0)
        ctx = MethodContext(
            model=build_model("resnet18_cifar", 10, width=0.125),
            loss=LOSSES.get("ce")(),
            num_classes=10,
            device=CPU,
            rng=MixRNG(0, CPU),
            epochs=1,
            steps_per_epoch=10,
            model_spec={"name": "resnet18_cifar", "width": 0.125, "image_size": 32},
        )
        params = {k: p.default for k, p in METHODS.entry(name).params.items()}
        method = build_method(name, {**params, "pairing": "derangement"}, ctx)
        for _ in range(3):
            assert_pairing(method._draw(N)[2], "derangement", N)
        x, y = batch()
        assert_pairing(method.mix_preview(x, y, MixRNG(1, CPU)).index, "derangement", N)


def test_patchmix_evolution_refuses_another_pairing(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[method]\nname = "patchmix"\nsearch = "evolution"\npairing = "reverse"\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    (p,) = err.value.problems
    assert "[method].pairing = 'reverse' works only with search = 'random'" in p


# ---------------------------------------------------------------- the pairing draws


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_derangement_is_a_permutation_without_fixed_points(n, seed):
    pi = derangement(n, torch.Generator().manual_seed(seed), CPU)
    assert sorted(pi.tolist()) == list(range(n))
    if n >= 2:
        assert not (pi == torch.arange(n)).any()
    else:
        assert pi.tolist() == list(range(n))  # n = 1: the only pairing there is (the sample with itself)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 300))
def test_reverse_is_timms_flip(n):
    x = torch.arange(n)
    assert torch.equal(flip_index(n, CPU), x.flip(0))
    assert torch.equal(draw_pairing(MixRNG(0, CPU), n, CPU, "reverse"), x.flip(0))


def test_derangement_partners_are_uniform_over_the_others():
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(4, 4)
    for _ in range(3000):
        pi = derangement(4, gen, CPU)
        counts[torch.arange(4), pi] += 1
    assert counts.diagonal().sum() == 0
    off = counts[~torch.eye(4, dtype=torch.bool)] / 3000
    assert torch.allclose(off, torch.full_like(off, 1 / 3), atol=0.04)


def test_unknown_pairing_is_a_value_error_outside_a_recipe():
    with pytest.raises(ValueError, match="unknown pairing 'random'"):
        draw_pairing(MixRNG(0, CPU), 4, CPU, "random")


# ---------------------------------------------------------------- recipes and runs


def test_bad_pairing_is_one_sentence(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[method]\nname = "cutmix"\npairing = "random"\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    (p,) = err.value.problems
    assert p.startswith(f"{path}: [method].pairing: expected one of 'permutation', 'derangement', 'reverse'")
    assert "got 'random'" in p
    path.write_text('[method]\nname = "switch"\nmixers = ["mixup", "cutmix"]\n[method.cutmix]\npairing = "flip"\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    (p,) = err.value.problems
    assert "[method].cutmix.pairing: expected one of 'permutation', 'derangement', 'reverse'" in p


def test_pairing_enters_the_run_id_only_when_set(tmp_path):
    def rid(text, *sets):
        path = tmp_path / "r.toml"
        path.write_text(text)
        return load_recipe(path, list(sets)).run_id()

    cut = '[method]\nname = "cutmix"\n'
    assert rid(cut) == rid(cut, 'method.pairing="permutation"')
    assert rid(cut, 'method.pairing="derangement"') not in (rid(cut), rid(cut, 'method.pairing="reverse"'))
    sw = '[method]\nname = "switch"\nmixers = ["mixup", "cutmix"]\n'
    assert rid(sw) == rid(sw + '[method.cutmix]\npairing = "permutation"\n')
    assert rid(sw + '[method.cutmix]\npairing = "reverse"\n') != rid(sw)
    assert rid(sw, 'method.pairing="reverse"') != rid(sw)


def test_pairing_is_recorded_in_the_run(tiny_recipe, tmp_path):
    from mixbench.engine import fit

    path = tiny_recipe(name="pair", method="mixup", epochs=1, train_size=100)
    recipe = load_recipe(path, ['method.pairing="derangement"'])
    result = fit(recipe, out_root=tmp_path / "results", device=CPU)
    s = json.loads((result.run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["method_settings"]["pairing"] == "derangement"
    assert 'pairing = "derangement"' in (result.run_dir / "recipe.toml").read_text()


# ---------------------------------------------------------------- one box per batch: a copy, bit for bit


def bits(t):
    return t.contiguous().view(torch.int32) if t.dtype == torch.float32 else t


def assert_same(got, want):
    for a, b in (
        (got.x, want.x),
        (got.lam, want.lam),
        (got.mask, want.mask),
        (got.index, want.index),
        (got.y_b, want.y_b),
    ):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.equal(bits(a), bits(b))


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_cutmix_batch_box_copy_equals_the_mask_formula(alpha):
    x, y = batch(n=16)
    n, _, h, w = x.shape
    mixer = build_mixer("cutmix", {"alpha": alpha})
    empty = 0
    for seed in range(40):
        got = mixer(x, y, MixRNG(seed, CPU))
        rng = MixRNG(seed, CPU)  # the same draws, then the mask blend of before
        lam = sample_lambda(rng, alpha, n, "batch")
        boxes = tuple(np.repeat(b, n) for b in rand_boxes(rng, lam[:1], h, w))
        index = rng.permutation(n, CPU)
        assert_same(got, masked_mix(x, y, index, box_mask(boxes, h, w, CPU)))
        empty += int(boxes[0][0] == boxes[1][0] or boxes[2][0] == boxes[3][0])
    assert alpha == 1.0 or empty > 0  # the empty box (λ = 1) is among the cases


def test_resizemix_batch_box_copy_equals_the_mask_formula():
    x, y = batch(n=16)
    n, _, h, w = x.shape
    mixer = build_mixer("resizemix", {})
    for seed in range(40):
        got = mixer(x, y, MixRNG(seed, CPU))
        rng = MixRNG(seed, CPU)
        tau = rng.np.beta(1.0, 1.0, 1)
        tau = np.where((tau < 0.1) | (tau > 0.8), rng.np.uniform(0.1, 0.8, 1), tau)
        bh, bw = (h * tau).astype(np.int64), (w * tau).astype(np.int64)
        cy, cx = rng.np.integers(0, h, 1), rng.np.integers(0, w, 1)
        box = (
            np.clip(cy - bh // 2, 0, h),
            np.clip(cy + bh // 2, 0, h),
            np.clip(cx - bw // 2, 0, w),
            np.clip(cx + bw // 2, 0, w),
        )
        y0, y1, x0, x1 = (torch.from_numpy(np.repeat(b, n)) for b in box)
        index = rng.permutation(n, CPU)
        want = masked_mix(
            x, y, index, (~inside_box(y0, y1, x0, x1, h, w)).float(), source_b=paste_resized(x[index], y0, y1, x0, x1)
        )
        assert_same(got, want)
