"""Scenes of the demo world: sampled from a seeded rng, rendered with Pillow.

A scene is a small JSON-serialisable dict, the ground truth that every caption, question and answer
of the world is generated from:
`{"background", "border": colour | None, "badge": {"color", "corner"} | None,
"objects": [{"shape", "color", "size", "position"}]}`.
Objects sit in distinct cells of a 3x3 grid, in reading order, and no two share both colour and
shape, so "the red circle" always names one object. Border and badge are the peripheral content that
CoD step 4 describes. Sizes are chosen so that shapes stay distinct at 64x64 with 8-pixel patches.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLORS = {  # well separated in RGB, none close to a background colour
    "red": (220, 40, 40),
    "green": (30, 160, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 135, 20),
}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
SIZES = ("small", "large")
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
CORNERS = ("top left", "top right", "bottom left", "bottom right")  # also grid positions
P_BORDER = 0.35  # share of images with a coloured frame
P_BADGE = 0.35  # share of images with a corner badge (only in a corner cell without an object)

# Geometry on a 64-pixel canvas, scaled for other sizes. A grid cell is 21.3 px: a large shape
# spans 17 px (2-3 patches), a small one 10 px; the frame is 2 px and the badge a 6-px square
# in the very corner, clear of the shapes of neighbouring cells.
_HALF = {"large": 8.5, "small": 5.0}
_BORDER_PX = 2.0
_BADGE_PX = 6.0


def sample_scene(rng: random.Random, max_objects: int, backgrounds: Sequence[str] = (), sizes: Sequence[str] = ()) -> dict:
    """A random scene with 1..max_objects objects (max_objects <= 9 cells); `backgrounds`, `sizes`: the
    ones it may draw (empty: all; the same draws as before for the full lists)."""
    n = rng.randint(1, min(max_objects, len(POSITIONS)))
    cells = sorted(rng.sample(range(len(POSITIONS)), n))
    kinds = rng.sample([(c, s) for c in COLORS for s in SHAPES], n)  # distinct (colour, shape)
    sizes = tuple(sizes) or SIZES
    objects = [{"shape": shape, "color": color, "size": rng.choice(sizes), "position": POSITIONS[cell]} for cell, (color, shape) in zip(cells, kinds)]
    background = rng.choice(list(backgrounds) or list(BACKGROUNDS))
    border = rng.choice(list(COLORS)) if rng.random() < P_BORDER else None
    free = [c for c in CORNERS if POSITIONS.index(c) not in cells]
    badge = None
    if free and rng.random() < P_BADGE:
        colors = [c for c in COLORS if c != border]  # a badge in the frame's colour would merge into it
        badge = {"color": rng.choice(colors), "corner": rng.choice(free)}
    return {"background": background, "border": border, "badge": badge, "objects": objects}


def render_scene(scene: dict, size: int) -> Image.Image:
    """The RGB image of a scene (pure function of the scene and the size: no randomness)."""
    scale = size / 64.0
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene["background"]])
    draw = ImageDraw.Draw(img)
    cell = size / 3.0
    for obj in scene["objects"]:
        idx = POSITIONS.index(obj["position"])
        cx, cy = (idx % 3 + 0.5) * cell, (idx // 3 + 0.5) * cell
        _draw_shape(draw, obj["shape"], cx, cy, _HALF[obj["size"]] * scale, COLORS[obj["color"]])
    if scene["border"] is not None:
        width = max(1, round(_BORDER_PX * scale))
        draw.rectangle([0, 0, size - 1, size - 1], outline=COLORS[scene["border"]], width=width)
    if scene["badge"] is not None:
        side = _BADGE_PX * scale
        off = _BORDER_PX * scale
        x0 = off if "left" in scene["badge"]["corner"] else size - off - side
        y0 = off if "top" in scene["badge"]["corner"] else size - off - side
        draw.rectangle([x0, y0, x0 + side - 1, y0 + side - 1], fill=COLORS[scene["badge"]["color"]])
    return img


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, half: float, rgb: tuple) -> None:
    if shape == "circle":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=rgb)
    elif shape == "square":
        h = half * 0.85  # a square of the same half-width looks much heavier than a circle
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx + half, cy + half * 0.8), (cx - half, cy + half * 0.8)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}")
