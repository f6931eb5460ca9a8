"""Procedural scenes of coloured shapes: vocabulary, sampling, captions and drawing.

A scene is a list of ``(concept, cell, dx, dy, radius)`` objects. Concepts are
``shape x colour`` pairs; their ids are ``color * len(SHAPES) + shape``. Everything is
a pure function of its arguments, so metadata (the concepts of a scene) is known without
drawing pixels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "COLORS",
    "COUNT_WORDS",
    "SHAPES",
    "SceneObject",
    "caption_for",
    "concept_name",
    "draw_scene",
    "zipf_probabilities",
]

SHAPES: tuple[tuple[str, str], ...] = (
    ("circle", "circles"),
    ("square", "squares"),
    ("triangle", "triangles"),
    ("diamond", "diamonds"),
    ("cross", "crosses"),
    ("ring", "rings"),
    ("star", "stars"),
    ("bar", "bars"),
)
COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (220, 40, 40)),
    ("green", (40, 180, 60)),
    ("blue", (50, 90, 235)),
    ("yellow", (240, 220, 40)),
    ("purple", (150, 60, 200)),
    ("orange", (250, 140, 30)),
    ("white", (240, 240, 240)),
    ("cyan", (40, 220, 220)),
)
COUNT_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_CAPTION_TEMPLATES = ("{}", "a picture of {}", "an image with {}", "{} on a dark background")


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: its concept id, grid cell and placement in pixels."""

    concept: int
    cell: int
    dx: float
    dy: float
    radius: float


def concept_name(concept: int) -> str:
    """Human-readable name of a concept id, as used in zero-shot prompts.

    Example:
        >>> concept_name(0), concept_name(9)
        ('red circle', 'green square')
    """
    color, shape = divmod(concept, len(SHAPES))
    return f"{COLORS[color][0]} {SHAPES[shape][0]}"


def zipf_probabilities(num_concepts: int, exponent: float, seed: int = 0) -> np.ndarray:
    """Long-tailed concept probabilities: ``p ∝ 1 / rank**exponent``.

    Ranks are a fixed permutation of the concept ids drawn from ``seed``, so head and
    tail mix shapes and colours. ``exponent=0`` gives the uniform distribution.

    Example:
        >>> p = zipf_probabilities(4, exponent=1.0)
        >>> round(float(p.sum()), 6), round(float(p.max() / p.min()), 6)
        (1.0, 4.0)
    """
    ranks = np.random.default_rng(seed).permutation(num_concepts)
    weights = 1.0 / (ranks + 1.0) ** exponent
    return weights / weights.sum()


def caption_for(concepts: Sequence[int], template: int = 0) -> str:
    """Caption naming every object with its count, in order of first appearance.

    Example:
        >>> caption_for([0, 0, 14])
        'two red circles and one green star'
        >>> caption_for([0, 9, 14], template=1)
        'a picture of one red circle, one green square and one green star'
    """
    counts = Counter(concepts)
    phrases = []
    for concept, count in counts.items():
        color, shape = divmod(concept, len(SHAPES))
        noun = SHAPES[shape][0] if count == 1 else SHAPES[shape][1]
        phrases.append(f"{COUNT_WORDS[count - 1]} {COLORS[color][0]} {noun}")
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return _CAPTION_TEMPLATES[template % len(_CAPTION_TEMPLATES)].format(text)


def num_caption_templates() -> int:
    """Number of caption templates a scene's caption is drawn from."""
    return len(_CAPTION_TEMPLATES)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of ``shape`` with radius ``r`` on offsets ``dx``, ``dy`` from its centre."""
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    if shape == "triangle":
        return (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) / 1.8)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "cross":
        t = max(0.34 * r, 0.75)
        return ((np.abs(dx) <= t) & (np.abs(dy) <= r)) | ((np.abs(dy) <= t) & (np.abs(dx) <= r))
    if shape == "ring":
        d2 = dx**2 + dy**2
        inner = max(r - max(0.45 * r, 1.2), 0.0)
        return (d2 <= r**2) & (d2 >= inner**2)
    if shape == "star":
        theta = np.arctan2(dy, dx)
        boundary = r * (0.55 + 0.45 * np.cos(5 * theta + np.pi / 2))
        return np.sqrt(dx**2 + dy**2) <= np.maximum(boundary, 0.3 * r)
    if shape == "bar":
        return (np.abs(dx) <= r) & (np.abs(dy) <= 0.35 * r)
    raise ValueError(f"Unknown shape {shape!r}; known: {[s for s, _ in SHAPES]}.")


def draw_scene(
    objects: Sequence[SceneObject], image_size: int, noise: np.ndarray | None = None
) -> np.ndarray:
    """Render objects on a 2x2 grid of cells to an ``[H, W, 3]`` uint8 image.

    Args:
        objects: the scene; each object's ``cell`` (0-3) picks its quadrant.
        image_size: side of the square image in pixels.
        noise: optional ``[H, W, 3]`` background noise in [-1, 1].

    Example:
        >>> img = draw_scene([SceneObject(0, 0, 0.0, 0.0, 5.0)], image_size=32)
        >>> img.shape, img[8, 8].tolist()
        ((32, 32, 3), [220, 40, 40])
    """
    background = np.full((image_size, image_size, 3), 30.0, dtype=np.float32)
    if noise is not None:
        background += 12.0 * noise
    coords = np.arange(image_size, dtype=np.float32) + 0.5
    half = image_size / 2
    for obj in objects:
        row, col = divmod(obj.cell, 2)
        cx = col * half + half / 2 + obj.dx
        cy = row * half + half / 2 + obj.dy
        dx = coords[None, :] - cx
        dy = coords[:, None] - cy
        color, shape = divmod(obj.concept, len(SHAPES))
        mask = _shape_mask(SHAPES[shape][0], dx, dy, obj.radius)
        background[mask] = COLORS[color][1]
    return np.clip(background, 0, 255).astype(np.uint8)
