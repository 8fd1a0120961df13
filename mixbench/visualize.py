"""Pictures of what a mixer does: a PNG grid with one row per pair.

Columns: first source x, second source x[π], the mask M (weight of x; a flat grey of value λ for
Mixup-style mixers), and the mixed image x̃, with λ and both labels written beside each row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from mixbench.mixing.base import MixOutput

TILE_GAP, HEADER, TEXT_W = 4, 18, 230
COLUMNS = ("first source", "second source", "mask (weight of first)", "mixed")


def _to_uint8(x: torch.Tensor, mean: tuple, std: tuple) -> np.ndarray:
    """[C, H, W] normalised tensor -> [H, W, 3] uint8 image."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    img = (x.detach().float().cpu() * s + m).clamp(0, 1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def _tile(arr: np.ndarray, scale: int) -> Image.Image:
    img = Image.fromarray(arr)
    return img.resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)


def render_mixes(x: torch.Tensor, mix: MixOutput, mean: tuple, std: tuple, classes: list[str],
                 scale: int = 3, title: str = "") -> Image.Image:
    """The grid image for clean batch ``x`` and its mix ``mix`` (both on any device)."""
    n, _, h, w = x.shape
    tw, th = w * scale, h * scale
    width = 4 * (tw + TILE_GAP) + TEXT_W
    height = HEADER * (2 if title else 1) + n * (th + TILE_GAP)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    top = 0
    if title:
        draw.text((4, 2), title, fill="black")
        top = HEADER
    for c, name in enumerate(COLUMNS):
        draw.text((c * (tw + TILE_GAP) + 2, top + 2), name[: max(4, tw // 6)], fill="black")
    top += HEADER
    index, lam = mix.index.cpu(), mix.lam.float().cpu()
    for i in range(n):
        j = int(index[i])
        if mix.mask is not None:
            m = mix.mask[i, 0].detach().float().cpu().clamp(0, 1).numpy()
        else:
            m = np.full((h, w), float(lam[i]), dtype=np.float32)
        mask_img = np.repeat((m * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
        mixed = _to_uint8(mix.x[i], mean, std)
        tiles = [_to_uint8(x[i], mean, std), _to_uint8(x[j], mean, std), mask_img, mixed]
        y0 = top + i * (th + TILE_GAP)
        for c, arr in enumerate(tiles):
            canvas.paste(_tile(arr, scale), (c * (tw + TILE_GAP), y0))
        if mix.cells is not None:  # PatchMix: each grid cell's label source, 'a' or 'b', on the mask tile
            _label_cells(draw, mix.cells[i].cpu(), 2 * (tw + TILE_GAP), y0, tw, th)
        ya, yb = int(mix.y_a[i]), int(mix.y_b[i])
        lines = [f"lambda = {float(lam[i]):.3f}", f"a: {classes[ya] if ya < len(classes) else ya}",
                 f"b: {classes[yb] if yb < len(classes) else yb}"]
        if mix.layer:
            lines.append(f"mixed at hidden stage {mix.layer}")
        draw.multiline_text((4 * (tw + TILE_GAP) + 4, y0 + 4), "\n".join(lines), fill="black", spacing=3)
    return canvas


def _label_cells(draw: ImageDraw.ImageDraw, cells: torch.Tensor, x0: int, y0: int, tw: int, th: int) -> None:
    """Write 'a' (cell from the first image) or 'b' at the centre of every grid cell of a tile."""
    g = cells.shape[-1]
    for r in range(g):
        for c in range(g):
            a = bool(cells[r, c])
            cx, cy = x0 + int((c + 0.5) * tw / g) - 3, y0 + int((r + 0.5) * th / g) - 5
            draw.text((cx, cy), "a" if a else "b", fill="black" if a else "white")


def save_mixes(path: Path, x: torch.Tensor, mix: MixOutput, mean: tuple, std: tuple, classes: list[str],
               title: str = "") -> Path:
    """Render and write the grid as PNG (parent folders created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    render_mixes(x, mix, mean, std, classes, title=title).save(path, format="PNG")
    return path
