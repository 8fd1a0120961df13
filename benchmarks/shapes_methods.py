"""Short CPU runs of every issue-4 method on the built-in shapes data, then one ``compare`` table.

Supervised runs use the quickstart recipe (ResNet-10 width 0.25, 4,000 images) for ``--epochs``
(15); semi-supervised runs keep 25 labels per class (250 of 4,000) with μ = 7, a labelled batch of
16 and threshold 0.7. The momentum schedules are shortened to a run of a few hundred steps (the
momentum encoder 0.99 → 0.999, the EMA teacher a constant 0.99, instead of 0.999 → 0.999999),
or the momentum encoder and the teacher would stay near their random start. ``samixp`` loads the
Mixer the ``samix`` run wrote. Usage::

    python benchmarks/shapes_methods.py --out /tmp/shapes_results [--device cpu] [--only automix ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from mixbench.recipe import dumps_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.toml"
SHORT_EMA = ["method.teacher_momentum=0.99", "method.teacher_momentum_end=0.99"]
SEMI = ["data.labels_per_class=25", "data.unlabeled_ratio=7", "train.batch_size=16", "train.lr=0.03",
        "method.threshold=0.7", *SHORT_EMA]
SHORT_MOMENTUM = ["method.momentum=0.99", "method.momentum_end=0.999", "train.min_lr=0.05"]

RUNS: dict[str, list[str]] = {
    "vanilla": ["method.name=vanilla"],
    "mixup": ["method.name=mixup", "method.alpha=1.0"],
    "cutmix": ["method.name=cutmix", "method.alpha=1.0"],
    "mixup_dm": ["method.name=mixup", "method.alpha=1.0", "loss.name=dm"],
    "cutmix_dm": ["method.name=cutmix", "method.alpha=1.0", "loss.name=dm"],
    "automix": ["method.name=automix", *SHORT_MOMENTUM],
    "samix": ["method.name=samix", *SHORT_MOMENTUM],
    "samixp": ["method.name=samixp"],
    "labelled_only_250": ["method.name=fixmatch", "method.unlabeled_weight=0.0", *SEMI],
    "fixmatch_250": ["method.name=fixmatch", *SEMI],
    "dmixmatch_250": ["method.name=dmixmatch", "loss.name=dm", "loss.eta=1.0", *SEMI, "method.mix_threshold=0.7"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--only", nargs="*", default=None, choices=sorted(RUNS))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = tomllib.loads(RECIPE.read_text())
    base.pop("method")  # each run names its own method
    base_path = args.out / "shapes_base.toml"
    base_path.write_text(dumps_toml(base))
    for key in args.only or list(RUNS):
        sets = [*RUNS[key], f"name=shapes_{key}", f"train.epochs={args.epochs}"]
        if key == "samixp":
            sets.append(f'method.mixer_checkpoint="{args.out / "shapes_samix"}"')
        cmd = [sys.executable, "-m", "mixbench.cli", "run", str(base_path), "--out", str(args.out), "--device",
               args.device, "--overwrite", *[a for s in sets for a in ("--set", s)]]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    subprocess.run([sys.executable, "-m", "mixbench.cli", "compare", str(args.out), "--format", "markdown"],
                   check=True)


if __name__ == "__main__":
    main()
