"""Find the recipe file a command names: the path as given, a card-style alias, or a bare recipe name.

Shipped recipes are named ``<dataset>_<backbone>_<method>.toml`` (``recipes/cifar100_r18_samix.toml``); the
design card writes ``<method>_<dataset>.toml`` (``recipes/samix_cifar100.toml``). The alias is a rule, not a
list: in any folder, ``<method>_<dataset>.toml`` names ``<dataset>_r18_<method>.toml`` (ResNet-18 is the
card's backbone), computed from the files that are there, so every recipe added later has its alias too.

``resolve_recipe_path(path)`` returns ``path`` when it is a file. Otherwise it looks, in order, in

1. the folder the path names (``recipes/samix_cifar100.toml`` -> ``recipes/cifar100_r18_samix.toml``);
2. for a relative path that starts with ``recipes/``, the same place below mixbench's recipes folders
   (``./recipes``, then the ``recipes/`` beside the installed package or checkout);
3. for a bare name without a folder (``samix_cifar100``, ``cifar100_r18_samix``, with or without ``.toml``),
   the top of those recipes folders, then their subfolders (``mocov3_cifar10`` -> ``recipes/ssl/...``);

for the file itself (``<name>.toml`` where the name has no extension) and for the alias, and says in one
line which file it used. Nothing found, or two files in one subfolder level that fit, is a
:class:`RecipeError` of one sentence with the closest recipe names (``difflib``).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from mixbench.errors import RecipeError

ALIAS_BACKBONE = "r18"  # the design card's backbone: <method>_<dataset> means <dataset>_r18_<method>
_SHIPPED = re.compile(rf"^(?P<dataset>.+?)_{ALIAS_BACKBONE}_(?P<method>.+)\.toml$")
SUFFIX = ".toml"


def _stderr_rank0(text: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # torchrun's other workers stay quiet
        print(text, file=sys.stderr, flush=True)


def recipe_roots() -> list[Path]:
    """mixbench's recipes folders: ``recipes`` (of the working directory), then the one beside the installed
    package (a checkout's), each once."""
    roots: list[Path] = []
    for candidate in (Path("recipes"), Path(__file__).resolve().parents[1] / "recipes"):
        if _is_dir(candidate) and all(candidate.resolve() != r.resolve() for r in roots):
            roots.append(candidate)
    return roots


def aliases(folder: Path) -> dict[str, Path]:
    """Card-style name -> shipped file for the recipes directly in ``folder``: ``samix_cifar100.toml`` ->
    ``folder/cifar100_r18_samix.toml``. A card name that two files would claim is left out (never guessed)."""
    found: dict[str, list[Path]] = {}
    for path in _tomls(folder):
        m = _SHIPPED.match(path.name)
        if m:
            found.setdefault(f"{m['method']}_{m['dataset']}{SUFFIX}", []).append(path)
    return {alias: paths[0] for alias, paths in found.items() if len(paths) == 1}


def card_name(path: Path) -> str | None:
    """The card-style name of a shipped recipe (``cifar100_r18_samix.toml`` -> ``samix_cifar100.toml``)."""
    m = _SHIPPED.match(Path(path).name)
    return f"{m['method']}_{m['dataset']}{SUFFIX}" if m else None


def resolve_recipe_path(path: str | Path, note: Callable[[str], None] | None = _stderr_rank0) -> Path:
    """The recipe file ``path`` names (see the module docstring); ``note`` gets the one line saying which file
    was used when it is not ``path`` itself. A RecipeError with a did-you-mean when there is none."""
    path = Path(path)
    if _is_file(path):
        return path
    found = _search(path)
    if found is not None:
        if note is not None:
            note(f"note: {path} is not a file; using {found} ({_why(path, found)})")
        return found
    raise RecipeError([_not_found(path)])


def _search(path: Path) -> Path | None:
    name = path.name
    names = [name] if name.endswith(SUFFIX) else [name + SUFFIX, name]
    folders = [[path.parent], *_fallback_folders(path)]
    for level in folders:
        hits = []
        for folder in level:
            if not _is_dir(folder):
                continue
            table = aliases(folder)
            for candidate in names:
                hit = folder / candidate if _is_file(folder / candidate) else table.get(candidate)
                if hit is not None and hit not in hits:
                    hits.append(hit)
                    break
        if len(hits) > 1:
            raise RecipeError(
                [
                    f"{path}: recipe file not found, and {len(hits)} recipes fit the name: "
                    f"{', '.join(map(str, hits))}; name one of them with its folder"
                ]
            )
        if hits:
            return hits[0]
    return None


def _fallback_folders(path: Path) -> list[list[Path]]:
    """Where else to look, level by level: below ``recipes/`` for ``recipes/...`` paths; for a bare name the
    recipes folders, then their subfolders (all subfolders of one recipes folder form one level)."""
    roots = recipe_roots()
    if len(path.parts) <= 1:
        return [[root] for root in roots] + [_subfolders(root) for root in roots]
    if not path.is_absolute() and path.parts[0] == "recipes":
        return [[root.joinpath(*path.parts[1:-1])] for root in roots]
    return []


def _why(path: Path, found: Path) -> str:
    if card_name(found) in {path.name, path.name + SUFFIX}:
        return f"<method>_<dataset>{SUFFIX} is an alias of <dataset>_{ALIAS_BACKBONE}_<method>{SUFFIX}"
    return "found in mixbench's recipes folder"


def _not_found(path: Path) -> str:
    """One sentence: the file is missing, the closest recipe names, and where the valid ones are listed."""
    fallback = [f for level in _fallback_folders(path) for f in level]
    places = [f for f in (path.parent, *(fallback or recipe_roots())) if _is_dir(f)]
    choices: dict[str, Path] = {}
    for folder in places:
        for file in _tomls(folder):
            choices.setdefault(file.name, file)
        for alias, file in aliases(folder).items():
            choices.setdefault(alias, file)
    word = path.name if path.name.endswith(SUFFIX) else path.name + SUFFIX
    close = difflib.get_close_matches(word, list(choices), n=2, cutoff=0.6)
    shown = []
    for name in close:
        file = choices[name]
        text = f"'{file}'" if name == file.name else f"'{file.parent / name}' (alias of {file.name})"
        if text not in shown:
            shown.append(text)
    hint = f" (did you mean {' or '.join(shown)}?)" if shown else ""
    where = ", ".join(dict.fromkeys(str(p) for p in places)) or "no recipes/ folder found"
    return (
        f"{path}: recipe file not found{hint}; valid: a recipe file, a shipped recipe's name or its "
        f"<method>_<dataset> alias (looked in {where}; `mixbench list recipes` lists them)"
    )


def _tomls(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.glob(f"*{SUFFIX}") if p.is_file())
    except OSError:
        return []


def _subfolders(root: Path) -> list[Path]:
    try:
        return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))
    except OSError:
        return []


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False
