"""The ``mixbench`` command line: one thin function per command, each calling the library.

Exit codes: 0 success, 1 internal failure, 2 user error (bad recipe, missing data, bad
arguments), 3 training diverged, 130 interrupted.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from mixbench import __version__
from mixbench.errors import DivergedError, RecipeError, UserError

app = typer.Typer(
    name="mixbench", add_completion=False, no_args_is_help=True,
    help="Benchmark mixup data augmentation: train recipes, compare runs.",
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _is_main_rank() -> bool:
    """False in torchrun's workers other than rank 0, which stay quiet."""
    return os.environ.get("RANK", "0") == "0"


def _err(text: str) -> None:
    if _is_main_rank():
        print(text, file=sys.stderr, flush=True)


def _guard(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` and turn known failures into their exit codes (no traceback for user errors)."""
    from mixbench.engine.stopping import Interrupted  # torch-free: list and compare never import torch

    try:
        return fn()
    except RecipeError as e:
        for problem in e.problems:
            _err(f"error: {problem}")
        raise typer.Exit(EXIT_USER) from None
    except UserError as e:
        _err(f"error: {e}")
        raise typer.Exit(EXIT_USER) from None
    except DivergedError as e:  # the trainer says what it kept in ``note``
        note = getattr(e, "note", "")
        _err(f"diverged: {e}; {note}" if note else f"diverged: {e}")
        raise typer.Exit(EXIT_DIVERGED) from None
    except (Interrupted, KeyboardInterrupt) as e:
        _err(f"interrupted: {getattr(e, 'note', '') or 'stopped before the run began; nothing was recorded'}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except typer.Exit:
        raise
    except Exception:
        traceback.print_exc()
        _err("internal error: this is a mixbench bug; please report it with the traceback above")
        raise typer.Exit(EXIT_INTERNAL) from None


def _version(value: bool) -> None:
    if value:
        print(f"mixbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Benchmark mixup data augmentation."""


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: key.path=VALUE (TOML value).")] = None,
    out: Annotated[Path, typer.Option(help="Results folder (runs land in OUT/<name>/<run id>).")] = Path("results"),
    device: Annotated[Device, typer.Option(help="Training device.")] = Device.auto,
    seed: Annotated[int | None, typer.Option(help="Seed (overrides the recipe's).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue this run from its checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run folder.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Resolve and print the recipe; train nothing.")] = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Processes on this machine (starts torchrun; "
                                       "[train].batch_size is the global batch).")] = 1,
) -> None:
    """Train one recipe and write its run record."""

    def go() -> None:
        from mixbench.engine import fit, resolve_device
        from mixbench.recipe import load_recipe
        from mixbench.recipe_names import resolve_recipe_path
        from mixbench.results.inspect import headline
        from mixbench.results.records import check_run

        if resume and overwrite:
            raise UserError("--resume and --overwrite exclude each other; pick one")
        overrides = list(set_ or [])
        if seed is not None:
            overrides.append(f"seed={seed}")
        path = resolve_recipe_path(recipe, note=_err)  # an alias or bare name: one line says which file
        r = load_recipe(path, overrides)
        run_dir = out / r.name / r.run_id()
        if dry_run:  # every check a run makes before it trains, except reading the data
            from mixbench.engine.build import check_batch_layout
            from mixbench.results import records

            resolve_device(device.value)
            check_batch_layout(r, nproc)
            check_folder = getattr(records, "check_run", None) or records.RunDir.check  # read-only
            check_folder(out, r.name, r.run_id(), resume=resume, overwrite=overwrite)
            print(r.to_toml(), end="")
            print(f"# would write to {run_dir}")
            return
        dev = resolve_device(device.value)
        if nproc > 1 and "WORLD_SIZE" not in os.environ:  # start torchrun, which runs this command per process
            from mixbench.engine.build import check_batch_layout
            from mixbench.engine.launch import launch

            check_batch_layout(r, nproc)
            check_run(out, r.name, r.run_id(), resume=resume, overwrite=overwrite)
            args = [str(path), "--out", str(out), "--device", device.value,
                    *[a for text in overrides for a in ("--set", text)],
                    *(["--resume"] if resume else []), *(["--overwrite"] if overwrite else [])]
            raise typer.Exit(launch(nproc, args, run_dir))
        result = fit(r, out_root=out, device=dev, resume=resume, overwrite=overwrite,
                     command_line=sys.argv)
        if not _is_main_rank():
            return
        s = result.summary
        top1 = s.get("top1_last")
        print(f"{result.status}: {r.name} -> {result.run_dir}  top-1 last {top1:.2f}%  "
              f"{headline(s, result.run_dir)}  "
              f"{s.get('images_per_s', 0):.0f} img/s  {s.get('wall_time_s', 0):.1f} s"
              if top1 is not None else f"{result.status}: {r.name} -> {result.run_dir}")
        if result.status == "interrupted":
            print("stopped as [train].stop_after asked; continue with --resume")

    _guard(go)


@app.command()
def validate(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe files to check.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: key.path=VALUE (TOML value), "
                                                   "applied to every recipe as `run` applies it.")] = None,
) -> None:
    """Check recipes without running them; report every problem and what each resolves to."""

    def go() -> None:
        from mixbench.recipe import load_recipe

        failed: list[str] = []
        for path in recipes:
            try:
                r = load_recipe(path, list(set_ or []))
            except RecipeError as e:
                failed += e.problems
                continue
            named = "" if r.name_given else " (name from the file name)"
            defaults = ", ".join(f"[{t}]" for t in r.defaults_only)
            print(f"ok: {path} -> {r.name}{named}: {r.essentials()}"
                  + (f"; all defaults: {defaults}" if defaults else ""))
        if failed:
            raise RecipeError(failed)

    _guard(go)


class Listing(str, Enum):
    methods = "methods"
    models = "models"
    datasets = "datasets"
    losses = "losses"
    evaluators = "evaluators"
    views = "views"
    recipes = "recipes"


@app.command("list")
def list_(what: Annotated[Listing, typer.Argument(help="What to list.")]) -> None:
    """List methods, models, datasets, losses, evaluators, SSL view settings or recipes, one line each."""

    def go() -> None:
        from mixbench.catalog import listing

        for name, doc in listing(what.value):
            print(f"{name:<28} {doc}")

    _guard(go)


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"
    latex = "latex"
    html = "html"


@app.command()
def compare(
    dirs: Annotated[list[Path] | None, typer.Argument(help="Folders to search for runs.")] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    reference: Annotated[bool, typer.Option("--reference", help="Add the published rows (OpenMixup; solo-learn, "
                                                        "lightly) and, per row, the published value and Δ.")] = False,
    metric: Annotated[str, typer.Option(
        "--metric", help="Ranking column, with mean ± std, 95% CI and Welch's p vs vanilla: top1, linear, knn, ece "
                         "(lower is better), mca, occlusion, fgsm or transfer:<data>.")] = "top1",
    pivot: Annotated[bool, typer.Option(
        "--pivot", help="One paper-style table: methods down, data set/backbone across, best in bold "
                        "(markdown, latex or table).")] = False,
) -> None:
    """Leaderboard of every run below DIRS (default: results/)."""

    def go() -> None:
        from mixbench.results.leaderboard import (
            check_metric,
            check_pivot_format,
            collect_runs,
            leaderboard,
            render,
            render_pivot,
        )

        name = check_metric(metric)  # a misspelt metric or format stops before any run folder is read
        if pivot:
            check_pivot_format(format.value)
        runs = collect_runs(list(dirs or [Path("results")]), warn=_err)  # warnings on stderr, tables on stdout
        groups = leaderboard(runs, include_reference=reference, metric=name)
        print(render_pivot(groups, format.value, metric=name) if pivot else render(groups, format.value))

    _guard(go)


def _mixer_params(sets: list[str]) -> dict[str, Any]:
    from mixbench.recipe import parse_override

    params: dict[str, Any] = {}
    for text in sets:
        keys, value = parse_override(text)
        keys = keys[1:] if keys[0] == "method" and len(keys) > 1 else keys
        node = params
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return params


@app.command()
def visualize(
    method: Annotated[str, typer.Option("--method", help="Mixer name (mixbench list methods).")],
    dataset: Annotated[str, typer.Option(help="Data set: shapes, cifar10, cifar100, imagefolder, ...")] = "shapes",
    root: Annotated[Path | None, typer.Option(help="Data folder (or archive) for non-shapes data sets.")] = None,
    n: Annotated[int, typer.Option("--n", min=1, max=64, help="Number of pairs (rows).")] = 8,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("mixes.png"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Mixer setting: key=VALUE, e.g. alpha=0.2.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the image choice and of the mixer.")] = 0,
    backbone: Annotated[str, typer.Option(help="Model for mixers that look through one.")] = "resnet18_cifar",
    device: Annotated[Device, typer.Option(help="Device to mix on.")] = Device.auto,
) -> None:
    """Write a PNG grid of mixed pairs: sources, mask, result, lambda and labels."""

    def go() -> None:
        import torch

        from mixbench.data import DataConfig, load_image_data
        from mixbench.engine import resolve_device
        from mixbench.methods import METHODS
        from mixbench.mixing import FILE_MIXERS, MIXERS, MixRNG, build_mixer
        from mixbench.models import build_model
        from mixbench.visualize import save_mixes

        if method not in MIXERS and method not in FILE_MIXERS:
            hint = (" (its Mixer trains with the model: see eval.save_mixes)" if method in ("automix", "samix")
                    else " (it trains without mixing)" if method in METHODS else "")
            valid = ", ".join([*MIXERS.names(), *FILE_MIXERS])
            raise UserError(f"--method: '{method}' is not a mixer{hint}; valid: {valid}")
        if out.suffix.lower() != ".png":
            raise UserError(f"--out {out}: expected a .png file name")
        dev = resolve_device(device.value)
        small = {"train_size": max(256, n), "test_size": 64} if dataset == "shapes" else {}
        data = load_image_data(DataConfig(source=dataset, root=str(root) if root else None, **small))
        pick = torch.randperm(data.train_x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        mean = torch.tensor(data.mean).view(1, -1, 1, 1)
        std = torch.tensor(data.std).view(1, -1, 1, 1)
        x = ((data.train_x[pick].float() / 255 - mean) / std).to(dev)
        y = data.train_y[pick].to(dev)
        model = build_model(backbone, len(data.classes), image_size=x.shape[-1]).to(dev)
        mixer = build_mixer(method, _mixer_params(set_ or []), model=model, device=dev)
        mix = mixer(x, y, MixRNG(seed, dev))
        title = f"{method} {mixer.describe()}"
        save_mixes(out, x, mix, data.mean, data.std, data.classes, title=title[:120])
        print(f"wrote {out} ({n} pairs of {dataset}, mean lambda {mix.lam.float().mean().item():.3f})")

    _guard(go)


class Distance(str, Enum):
    cosine = "cosine"
    euclidean = "euclidean"


def _number_list(text: str, option: str, kind: type) -> list:
    """``"20,200"`` → ``[20, 200]``; a clear error for anything else."""
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise UserError(f"{option} {text}: expected positive {kind.__name__} values separated by commas, "
                        f"e.g. {option} {'20,200' if kind is int else '0.07,0.1'}")
    return list(dict.fromkeys(values))


@app.command()
def knn(
    path: Annotated[Path, typer.Argument(help="A run folder or its checkpoint.pt.")],
    k: Annotated[str, typer.Option("--k", help="Neighbour counts, comma-separated.")] = "20,200",
    t: Annotated[str, typer.Option("--t", help="Temperatures, comma-separated.")] = "0.07,0.1",
    distance: Annotated[Distance, typer.Option(help="Similarity of features.")] = Distance.cosine,
    device: Annotated[Device, typer.Option(help="Device to encode and search on.")] = Device.auto,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Data override: data.key=VALUE, "
                                                   "e.g. data.root=/data/cifar.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute even when a stored result matches.")] = False,
    batch: Annotated[int, typer.Option(min=1, help="Images per encoder batch.")] = 500,
) -> None:
    """Weighted kNN accuracy of a checkpoint's frozen encoder; stored in RUN/evals/knn-<hash>/result.json."""

    def go() -> None:
        from mixbench.engine.trainer import resolve_device
        from mixbench.evaluate.knn import KNNAccuracy, metric_key
        from mixbench.evaluate.runner import open_checkpoint

        ks, temperatures = _number_list(k, "--k", int), _number_list(t, "--t", float)
        enc = open_checkpoint(path, "knn", device=resolve_device(device.value), sets=set_ or [], batch=batch,
                              force=force)
        evaluator = KNNAccuracy(ks, temperatures, distance.value, batch=batch)

        def compute() -> dict[str, float]:
            f = enc.features()
            return evaluator.metrics(f["train_f"], f["train_y"], f["test_f"], f["test_y"], int(f["num_classes"]))

        result = enc.run("knn", evaluator.settings(), compute)
        print(f"knn: {enc.describe(result)}")
        for kk in ks:
            for tt in temperatures:
                print(f"  k={kk:<4d} T={tt:<6g} top-1 {result['metrics'][metric_key(kk, tt)]:.2f}%")
        key = enc.data_key
        print(f"protocol: {evaluator.protocol}; data {key['source']} (train_size {key['train_size']}, "
              f"test_size {key['test_size']})")
        print(f"result: {result['path']}")

    _guard(go)


class ProbeAugment(str, Enum):
    none = "none"
    crop_flip = "crop-flip"


@app.command("linear-eval")
def linear_eval(
    path: Annotated[Path, typer.Argument(help="A run folder or its checkpoint.pt.")],
    lr: Annotated[str, typer.Option("--lr", help="Learning rates, comma-separated: all train at once; the one "
                                    "with the best held-out accuracy is reported.")] = "0.1,0.3,1.0",
    epochs: Annotated[int, typer.Option(min=1, help="Epochs over the training features.")] = 100,
    batch: Annotated[int, typer.Option(min=1, help="Mini-batch of the linear heads.")] = 256,
    val_fraction: Annotated[float, typer.Option(help="Share of the training set held out to choose the lr.")] = 0.1,
    device: Annotated[Device, typer.Option(help="Device to encode and train on.")] = Device.auto,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Data override: data.key=VALUE.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute even when a stored result matches.")] = False,
    augment: Annotated[ProbeAugment, typer.Option(help="Training images: none (features extracted once) or "
                                                  "crop-flip (random crop as in training + flip, re-encoded by "
                                                  "the frozen encoder every step).")] = ProbeAugment.none,
) -> None:
    """Linear probe of a checkpoint's frozen encoder (BN in eval mode, pooled features, unaugmented unless
    --augment crop-flip); stored in RUN/evals/linear-<hash>/result.json."""

    def go() -> None:
        from mixbench.engine.trainer import resolve_device
        from mixbench.evaluate.linear import linear_eval as run_probe
        from mixbench.evaluate.runner import open_checkpoint

        lrs = _number_list(lr, "--lr", float)
        if not 0 < val_fraction < 1:
            raise UserError(f"--val-fraction {val_fraction}: expected a number between 0 and 1, e.g. 0.1")
        enc = open_checkpoint(path, "linear-eval", device=resolve_device(device.value), sets=set_ or [],
                              batch=500, force=force)
        probe, result = run_probe(enc, lrs=lrs, epochs=epochs, batch=batch, val_fraction=val_fraction,
                                  augment=augment.value)
        m = result["metrics"]
        print(f"linear-eval: {enc.describe(result)}")
        for rate in lrs:
            print(f"  lr {rate:<6g} test top-1 {m[f'linear_top1@lr={rate:g}']:.2f}%")
        print(f"chosen on {val_fraction:.0%} held-out training images: lr {m['linear_lr']:g} "
              f"(held-out top-1 {m['linear_val_top1']:.2f}%) -> test top-1 {m['linear_top1']:.2f}%")
        print(f"protocol: {probe.protocol}")
        print(f"result: {result['path']}")

    _guard(go)


class TransferMode(str, Enum):
    linear = "linear"
    finetune = "finetune"


@app.command()
def transfer(
    path: Annotated[Path, typer.Argument(help="A run folder or its checkpoint.pt.")],
    data: Annotated[str, typer.Option("--data", help="Target data set: cifar10, cifar100, tiny-imagenet, "
                                      "imagefolder, shapes.")],
    root: Annotated[Path | None, typer.Option(help="Folder or archive (.tar/.tar.gz) of the target data.")] = None,
    mode: Annotated[TransferMode, typer.Option(help="linear: probe the frozen backbone; finetune: train it with "
                                               "a fresh head.")] = TransferMode.linear,
    image_size: Annotated[int | None, typer.Option(min=8, max=1024, help="Side the target images are resized "
                                                   "to (default: the checkpoint's).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="key=VALUE: data.* (train_size, test_size, "
                                                   "seed, ...), probe.* (lrs, epochs, batch, val_fraction) for "
                                                   "linear, recipe keys (train.epochs, ...) for finetune.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute even when a stored result matches.")] = False,
    device: Annotated[Device, typer.Option(help="Device to encode and train on.")] = Device.auto,
) -> None:
    """Transfer a checkpoint's backbone to another data set with a fresh head (checkpoint normalisation, images at
    the checkpoint's side); stored in RUN/evals/transfer-<hash>/result.json."""

    def go() -> None:
        from mixbench.engine.trainer import resolve_device
        from mixbench.evaluate.transfer import transfer as run_transfer

        t = run_transfer(path, data=data, root=root, mode=mode.value, image_size=image_size, sets=set_ or [],
                         force=force, device=resolve_device(device.value))
        m, protocol = t.metrics, t.result["protocol"]
        target = protocol["target"]
        print(f"transfer: {t.describe()}")
        sizes = f"train_size {target['train_size'] or 'all'}, test_size {target['test_size'] or 'all'}"
        if t.mode == "linear":
            print(f"  linear probe on {t.data} ({sizes}) at {t.image_size} px: test top-1 {m['transfer_top1']:.2f}% "
                  f"(lr {m['transfer_lr']:g} chosen on held-out training images, held-out top-1 "
                  f"{m['transfer_val_top1']:.2f}%)")
        else:
            epochs = protocol["finetune"]["train"]["epochs"]
            print(f"  fine-tuned on {t.data} ({sizes}) at {t.image_size} px for {epochs} epochs: test top-1 "
                  f"{m['transfer_top1']:.2f}% (last epoch)")
            print(f"  fine-tuning run: {t.finetune_run}")
        norm = protocol["normalization"]
        print(f"normalisation: mean {norm['mean']} std {norm['std']} (from the {norm['from']})")
        print(f"result: {t.result['path']}")

    _guard(go)


@app.command()
def evaluate(
    paths: Annotated[list[Path], typer.Argument(help="Run folders or their checkpoint.pt files.")],
    only: Annotated[str, typer.Option(help="Evaluators, comma-separated: calibration, occlusion, fgsm, "
                                      "corruptions (45 passes over the test set).")] = "calibration,occlusion,fgsm",
    device: Annotated[Device, typer.Option(help="Device to evaluate on.")] = Device.auto,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Data override: data.key=VALUE.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute even when a stored result matches.")] = False,
    batch: Annotated[int, typer.Option(min=1, help="Test images per batch.")] = 500,
) -> None:
    """Calibration, occlusion and FGSM (and on request corruption) robustness of each checkpoint's reported
    classifier on its test set;
    stored in RUN/evals/<evaluator>-<hash>/result.json (plus RUN/reliability.png)."""

    def go() -> None:
        from mixbench.engine.trainer import resolve_device
        from mixbench.evaluate.runner import EVALUATE_NAMES, evaluate_checkpoint, open_checkpoint

        names = list(dict.fromkeys(n.strip() for n in only.split(",") if n.strip()))
        unknown = [n for n in names if n not in EVALUATE_NAMES]
        if unknown or not names:
            raise UserError(f"--only {only}: unknown evaluator(s) {', '.join(unknown) or '(none given)'}; "
                            f"valid: {', '.join(EVALUATE_NAMES)}")
        dev = resolve_device(device.value)
        for path in paths:
            enc = open_checkpoint(path, "evaluate", device=dev, sets=set_ or [], batch=batch, force=force)
            for name, result in evaluate_checkpoint(enc, names, batch=batch):
                print(f"{name}: {enc.describe(result)}")
                for key, value in result["metrics"].items():
                    print(f"  {name} {key} {value:.4g}")
            if "calibration" in names:
                print(f"  reliability diagram: {enc.run_dir / 'reliability.png'}")

    _guard(go)


class PlotKind(str, Enum):
    curves = "curves"
    reliability = "reliability"
    occlusion = "occlusion"
    corruptions = "corruptions"


class Band(str, Enum):
    minmax = "minmax"
    std = "std"


@app.command()
def plot(
    paths: Annotated[list[Path], typer.Argument(help="Run folders, or folders holding runs (searched below).")],
    kind: Annotated[PlotKind, typer.Option(help="curves: test metric and train loss per epoch; reliability: "
                                           "calibration per run; occlusion: top-1 vs occluder size; corruptions: "
                                           "top-1 vs severity per corruption.")] = PlotKind.curves,
    out: Annotated[Path | None, typer.Option(help="PNG file to write (default: <kind>.png).")] = None,
    metric: Annotated[str, typer.Option(help="curves: the metrics.jsonl key to draw (top1, top5, ...).")] = "top1",
    band: Annotated[Band, typer.Option(help="Seed band around each group's mean: min-max over the runs or "
                                       "±1 sample std.")] = Band.minmax,
) -> None:
    """Draw learning curves, reliability diagrams or robustness curves of runs as a PNG.

    Runs differing only in the seed are one line with a seed band. Needs matplotlib (the "plot" extra of
    mixbench, or pip install matplotlib)."""

    def go() -> None:
        from mixbench.plots import plot as draw

        result = draw(paths, kind.value, out or Path(f"{kind.value}.png"), metric=metric, band=band.value)
        print(f"wrote {result.path} ({result.kind}: {result.runs} run{'s' if result.runs != 1 else ''} in "
              f"{result.groups} group{'s' if result.groups != 1 else ''}, {result.size[0]}x{result.size[1]} px)")

    _guard(go)


class ExportFormat(str, Enum):
    safetensors = "safetensors"
    pt = "pt"


@app.command()
def export(
    source: Annotated[Path, typer.Argument(help="Run folder or its checkpoint.pt.")],
    format_: Annotated[ExportFormat, typer.Option("--format", help="safetensors (tensors + metadata), or pt "
                                                  "(torch.save of state_dict + metadata).")] = ExportFormat.safetensors,
    out: Annotated[Path | None, typer.Option(help="File to write (default: backbone.<format> in the run "
                                             "folder).")] = None,
) -> None:
    """Write a run's encoder (backbone only, no head) with metadata, as safetensors or pt.

    The metadata describes it (architecture, width, image size, normalisation, classes, run id, recipe hash,
    versions). The recipe key model.weights loads it; for a
    timm:<name> backbone so does timm.create_model(name, pretrained=True,
    pretrained_cfg_overlay=dict(file=PATH), num_classes=0). The built-in CIFAR backbones are not timm models
    and timm cannot load them (3x3 stride-1 stem, no max-pool, width multiplier): metadata timm_loadable false."""

    def go() -> None:
        from mixbench.export import export_backbone, human_bytes

        r = export_backbone(source, fmt=format_.value, out=out)
        m = r.metadata
        width = f" (width {m['width']:g})" if m["width"] is not None else ""
        print(f"exported {m['architecture']}{width} encoder of {m['run_id'] or source} -> {r.path}")
        print(f"  {r.format}, {human_bytes(r.bytes)} ({r.bytes} bytes), {r.tensors} tensors, "
              f"{r.parameters:,} parameters, {m['num_features']}-d features, {m['image_size']} px, "
              f"mean {m['mean']} std {m['std']}")
        print(f"  load: [model].weights = \"{r.path}\"" + (f"; {m['timm_note']}" if m["timm_loadable"] else
                                                          "; not loadable by timm.create_model (a mixbench "
                                                          "backbone, see the metadata's timm_note)"))

    _guard(go)


class Launcher(str, Enum):
    local = "local"
    slurm = "slurm"


_SEEDS_HELP = "Seeds, comma-separated, e.g. 0,1,2 (default: each recipe's own seed)."
_JOBS_HELP = "Runs at once: local processes (each with cores/jobs threads; CUDA jobs share the GPU), or SLURM array " \
             "parallelism."
_SLURM_HELP = "submitit parameter KEY=VALUE for --launcher slurm, e.g. slurm_partition=gpu, timeout_min=600."
_WAIT_HELP = "--launcher slurm: wait for the jobs and report each run as it ends."


@app.command("sweep")
def sweep_cmd(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe TOML files.")],
    seeds: Annotated[str | None, typer.Option("--seeds", help=_SEEDS_HELP)] = None,
    grid: Annotated[list[str] | None, typer.Option("--grid", help="key.path=V1,V2,... (repeatable): every "
                                                   "combination runs; values are TOML, split at top-level commas.")
                    ] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", min=1, help=_JOBS_HELP)] = None,
    launcher: Annotated[Launcher, typer.Option(help="Where runs go: this machine, or a SLURM job array (needs "
                                               "the slurm extra).")] = Launcher.local,
    out: Annotated[Path, typer.Option(help="Results folder; the manifest goes to OUT/sweeps/<id>/.")] = Path("results"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override for every run: key.path=VALUE.")] = None,
    device: Annotated[Device, typer.Option(help="Training device of every run.")] = Device.auto,
    slurm: Annotated[list[str] | None, typer.Option("--slurm", help=_SLURM_HELP)] = None,
    wait: Annotated[bool, typer.Option("--wait", help=_WAIT_HELP)] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the runs and what would happen; run nothing.")
                       ] = False,
) -> None:
    """Run recipes x grid x seeds: skip completed runs, resume interrupted ones, list failures at the end.

    Exit codes: 0 every run completed (or, with slurm, was submitted), 1 some run failed, diverged or is invalid,
    2 bad arguments, 130 stopped by Ctrl-C/SIGTERM (rerun the same command to continue)."""

    def go() -> None:
        from mixbench.sweep import parse_seeds
        from mixbench.sweep import sweep as run_sweep

        code = run_sweep(list(recipes), seeds=parse_seeds(seeds), grid=list(grid or []), sets=list(set_ or []),
                         out=out, jobs=jobs, launcher=launcher.value, device=device.value, dry_run=dry_run,
                         slurm=list(slurm or []), wait=wait)
        if code:
            raise typer.Exit(code)

    _guard(go)


suite_app = typer.Typer(help="Suites: published tables as one sweep each.", no_args_is_help=True)
app.add_typer(suite_app, name="suite")


@suite_app.command("list")
def suite_list_cmd(
    images_per_s: Annotated[float, typer.Option("--images-per-s", min=1, help="Assumed vanilla ResNet-18 img/s at "
                                                "32 px on one GPU, for the cost estimate.")] = 10_000.0,
) -> None:
    """List the suites: name, runs, estimated cost, description."""

    def go() -> None:
        from mixbench.sweep.suites import cost_note, listing

        rows = listing(images_per_s)
        if not rows:
            raise UserError("no suites found (mixbench/suites/ is missing from this installation)")
        width = max(len(r["name"]) for r in rows)
        print(f"{'name':<{width}}  {'runs':>4}  {'est. cost':<14}  description")
        for r in rows:
            runs = "" if r["runs"] is None else r["runs"]
            print(f"{r['name']:<{width}}  {runs:>4}  {r['cost']:<14}  {r['description']}")
        print(cost_note(images_per_s))

    _guard(go)


@suite_app.command("run")
def suite_run_cmd(
    name: Annotated[str, typer.Argument(help="Suite name (mixbench suite list) or the path of a suite .toml.")],
    seeds: Annotated[str | None, typer.Option("--seeds", help="Seeds, comma-separated (default: the suite's).")
                     ] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", min=1, help=_JOBS_HELP)] = None,
    launcher: Annotated[Launcher, typer.Option(help="Where runs go.")] = Launcher.local,
    out: Annotated[Path | None, typer.Option(help="Results folder (default: results/<suite>).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override for every run: key.path=VALUE, e.g. "
                                                   "data.root=/data/cifar.")] = None,
    device: Annotated[Device, typer.Option(help="Training device of every run.")] = Device.auto,
    slurm: Annotated[list[str] | None, typer.Option("--slurm", help=_SLURM_HELP)] = None,
    wait: Annotated[bool, typer.Option("--wait", help=_WAIT_HELP)] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the runs; run nothing.")] = False,
) -> None:
    """Run a suite as a sweep; `mixbench compare OUT --reference` then gives its table beside the published one."""

    def go() -> None:
        from mixbench.sweep import parse_seeds, run_suite

        code = run_suite(name, seeds=parse_seeds(seeds), out=out, jobs=jobs, launcher=launcher.value,
                         device=device.value, sets=list(set_ or []), slurm=list(slurm or []), wait=wait,
                         dry_run=dry_run)
        if code:
            raise typer.Exit(code)

    _guard(go)


bench_app = typer.Typer(help="Speed benchmarks.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("mixers")
def bench_mixers_cmd(
    device: Annotated[Device, typer.Option(help="Device to measure on.")] = Device.auto,
    batch: Annotated[int, typer.Option(min=1, help="Batch size.")] = 256,
    backbone: Annotated[str, typer.Option(help="Backbone whose training step is the yardstick.")] = "resnet18_cifar",
    width: Annotated[float, typer.Option(help="Backbone width multiplier.")] = 1.0,
    only: Annotated[list[str] | None, typer.Option("--only", help="Measure only these mixers.")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Timed calls per measurement.")] = 5,
    out: Annotated[Path | None, typer.Option(help="JSON file (default: mixers_bench_<device>.json).")] = None,
) -> None:
    """Time every mixer per batch and relative to one training step of the backbone."""

    def go() -> None:
        import json

        from mixbench.bench import bench_mixers, format_table
        from mixbench.engine import resolve_device
        from mixbench.mixing import MIXERS

        dev = resolve_device(device.value)
        for name in only or []:
            if name not in MIXERS or name == "switch":
                raise UserError(f"--only {name}: not a mixer; valid: {', '.join(MIXERS.names())}")
        result = bench_mixers(dev, batch=batch, backbone=backbone, width=width, names=only or None,
                              repeats=repeats, progress=lambda m: print(f"  timing {m} ...", file=sys.stderr))
        print(format_table(result))
        path = out or Path(f"mixers_bench_{dev.type}.json")
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")

    _guard(go)


@bench_app.command("methods")
def bench_methods_cmd(
    device: Annotated[Device, typer.Option(help="Device to measure on.")] = Device.auto,
    batch: Annotated[int, typer.Option(min=1, help="Batch size.")] = 100,
    backbone: Annotated[str, typer.Option(help="Backbone of every method.")] = "resnet18_cifar",
    width: Annotated[float, typer.Option(help="Backbone width multiplier.")] = 1.0,
    only: Annotated[list[str] | None, typer.Option("--only", help="Measure only these methods (and vanilla).")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Timed steps per method.")] = 5,
    out: Annotated[Path | None, typer.Option(help="JSON file (default: methods_bench_<device>.json).")] = None,
) -> None:
    """Time a full training step of each method relative to vanilla, with its peak memory."""

    def go() -> None:
        import json

        from mixbench.bench import bench_methods, format_methods_table
        from mixbench.data.batches import LabelledBatch
        from mixbench.engine import resolve_device
        from mixbench.methods import METHODS

        dev = resolve_device(device.value)
        for name in only or []:
            if name not in METHODS or METHODS.get(name).batch != LabelledBatch() or name == "switch":
                raise UserError(f"--only {name}: not a supervised method; valid: {', '.join(METHODS.names())}")
        result = bench_methods(dev, batch=batch, backbone=backbone, width=width, names=only or None,
                               repeats=repeats, progress=lambda m: print(f"  timing {m} ...", file=sys.stderr))
        print(format_methods_table(result))
        path = out or Path(f"methods_bench_{dev.type}.json")
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")

    _guard(go)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit as e:  # under ``run --nproc``: tell the launcher how rank 0 ended
        from mixbench.engine.launch import record_exit_code

        record_exit_code(e.code if isinstance(e.code, int) else (0 if e.code is None else 1))
        raise


if __name__ == "__main__":
    main()
