"""The ``mixbench`` command line: one thin function per command, each calling the library.

Exit codes: 0 success, 1 internal failure, 2 user error (bad recipe, missing data, bad
arguments), 3 training diverged, 130 interrupted.
"""

from __future__ import annotations

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


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _guard(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` and turn known failures into their exit codes (no traceback for user errors)."""
    from mixbench.engine import Interrupted

    try:
        return fn()
    except RecipeError as e:
        for problem in e.problems:
            _err(f"error: {problem}")
        raise typer.Exit(EXIT_USER) from None
    except UserError as e:
        _err(f"error: {e}")
        raise typer.Exit(EXIT_USER) from None
    except DivergedError as e:
        _err(f"diverged: {e}; the last good checkpoint was kept")
        raise typer.Exit(EXIT_DIVERGED) from None
    except (Interrupted, KeyboardInterrupt):
        _err("interrupted: checkpoint kept; continue with --resume")
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
) -> None:
    """Train one recipe and write its run record."""

    def go() -> None:
        from mixbench.engine import fit, resolve_device
        from mixbench.recipe import load_recipe

        if resume and overwrite:
            raise UserError("--resume and --overwrite exclude each other; pick one")
        overrides = list(set_ or [])
        if seed is not None:
            overrides.append(f"seed={seed}")
        r = load_recipe(recipe, overrides)
        run_dir = out / r.name / r.run_id()
        if dry_run:
            print(r.to_toml(), end="")
            print(f"# would write to {run_dir}")
            return
        dev = resolve_device(device.value)
        result = fit(r, out_root=out, device=dev, resume=resume, overwrite=overwrite,
                     command_line=sys.argv)
        s = result.summary
        top1 = s.get("top1_last")
        print(f"{result.status}: {r.name} -> {result.run_dir}  top-1 last {top1:.2f}%  "
              f"median-last-10 {s.get('top1_median_last10'):.2f}%  "
              f"{s.get('images_per_s', 0):.0f} img/s  {s.get('wall_time_s', 0):.1f} s"
              if top1 is not None else f"{result.status}: {r.name} -> {result.run_dir}")
        if result.status == "interrupted":
            print("stopped as [train].stop_after asked; continue with --resume")

    _guard(go)


@app.command()
def validate(recipes: Annotated[list[Path], typer.Argument(help="Recipe files to check.")]) -> None:
    """Check recipes without running them; report every problem."""

    def go() -> None:
        from mixbench.recipe import load_recipe

        failed: list[str] = []
        for path in recipes:
            try:
                load_recipe(path)
                print(f"ok: {path}")
            except RecipeError as e:
                failed += e.problems
        if failed:
            raise RecipeError(failed)

    _guard(go)


class Listing(str, Enum):
    methods = "methods"
    models = "models"
    datasets = "datasets"
    losses = "losses"
    recipes = "recipes"


@app.command("list")
def list_(what: Annotated[Listing, typer.Argument(help="What to list.")]) -> None:
    """List methods, models, datasets, losses or recipes with a one-line description each."""

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


@app.command()
def compare(
    dirs: Annotated[list[Path] | None, typer.Argument(help="Folders to search for runs.")] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    reference: Annotated[bool, typer.Option("--reference", help="Add OpenMixup's published rows.")] = False,
) -> None:
    """Leaderboard of every run below DIRS (default: results/)."""

    def go() -> None:
        from mixbench.results.leaderboard import collect_runs, leaderboard, render

        runs = collect_runs(list(dirs or [Path("results")]))
        print(render(leaderboard(runs, include_reference=reference), format.value))

    _guard(go)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
