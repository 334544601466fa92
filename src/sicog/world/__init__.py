"""The procedural demo world: seeded images of coloured shapes with exact ground truth.

It lets the whole SICOG loop run on a laptop and be measured honestly: every caption and answer
the models produce can be checked against the scene that drew the image.
"""

from sicog.world.build import FILES, WORLD_VERSION, build_world, world_texts
from sicog.world.catalog import world_catalog
from sicog.world.language import QTYPES, TEXT_QTYPES, position_phrase
from sicog.world.scenes import COLORS, POSITIONS, SHAPES, render_scene, sample_scene

__all__ = [
    "COLORS",
    "FILES",
    "POSITIONS",
    "QTYPES",
    "SHAPES",
    "TEXT_QTYPES",
    "WORLD_VERSION",
    "build_world",
    "position_phrase",
    "render_scene",
    "sample_scene",
    "world_catalog",
    "world_texts",
]
