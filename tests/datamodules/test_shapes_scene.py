"""Scene vocabulary, captions, long-tail probabilities and drawing."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from lightning_plugins.datamodules.shapes_scene import (
    COLORS,
    COUNT_WORDS,
    SHAPES,
    SceneObject,
    caption_for,
    concept_name,
    draw_scene,
    zipf_probabilities,
)

NUM_CONCEPTS = len(SHAPES) * len(COLORS)


def concept(color: str, shape: str) -> int:
    colors = [c for c, _ in COLORS]
    shapes = [s for s, _ in SHAPES]
    return colors.index(color) * len(SHAPES) + shapes.index(shape)


def test_vocabulary():
    assert len(SHAPES) == len(COLORS) == 8
    names = [concept_name(c) for c in range(NUM_CONCEPTS)]
    assert len(set(names)) == NUM_CONCEPTS
    assert concept_name(concept("blue", "star")) == "blue star"
    assert concept_name(concept("cyan", "bar")) == "cyan bar" == concept_name(63)
    assert len({rgb for _, rgb in COLORS}) == len(COLORS)


@pytest.mark.parametrize(
    ("concepts", "template", "caption"),
    [
        (
            [concept("red", "circle")] * 2 + [concept("blue", "star")],
            0,
            "two red circles and one blue star",
        ),
        ([concept("green", "ring")], 0, "one green ring"),
        ([concept("cyan", "bar")] * 3, 0, "three cyan bars"),
        ([concept("white", "cross")] * 4, 3, "four white crosses on a dark background"),
        (
            [
                concept("yellow", "square"),
                concept("purple", "diamond"),
                concept("yellow", "square"),
            ],
            2,
            "an image with two yellow squares and one purple diamond",
        ),
        (
            [
                concept(c, s)
                for c, s in [
                    ("red", "circle"),
                    ("white", "triangle"),
                    ("green", "star"),
                    ("blue", "bar"),
                ]
            ],
            1,
            "a picture of one red circle, one white triangle, one green star and one blue bar",
        ),
    ],
)
def test_caption_handmade(concepts, template, caption):
    assert caption_for(concepts, template) == caption


def test_caption_templates_wrap_around():
    concepts = [concept("red", "circle")]
    assert caption_for(concepts, 4) == caption_for(concepts, 0) == "one red circle"
    assert len({caption_for(concepts, t) for t in range(4)}) == 4


def test_caption_names_every_concept_with_its_count():
    rng = np.random.default_rng(0)
    for _ in range(200):
        concepts = rng.integers(0, NUM_CONCEPTS, size=rng.integers(1, 5)).tolist()
        text = caption_for(concepts, int(rng.integers(4)))
        counts = Counter(concepts)
        for c, n in counts.items():
            color, shape = COLORS[c // 8][0], SHAPES[c % 8][n > 1]
            assert f"{COUNT_WORDS[n - 1]} {color} {shape}" in text, (concepts, text)
        assert text.count(" and ") == (len(counts) > 1)
        assert text.count(", ") == max(len(counts) - 2, 0)


@pytest.mark.parametrize("exponent", [0.0, 0.5, 1.0, 2.0])
def test_zipf_probabilities(exponent):
    p = zipf_probabilities(64, exponent, seed=3)
    assert p.shape == (64,)
    assert p.sum() == pytest.approx(1.0)
    weights = 1.0 / np.arange(1, 65) ** exponent
    np.testing.assert_allclose(np.sort(p)[::-1], weights / weights.sum())


def test_zipf_ranks_are_a_fixed_seeded_permutation():
    p0, p0_again, p1 = (zipf_probabilities(64, 1.0, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(p0, p0_again)
    assert not np.array_equal(p0, p1)
    head = np.argsort(p0)[::-1][:8]
    # head and tail mix shapes and colours
    assert len({c % 8 for c in head}) > 1 and len({c // 8 for c in head}) > 1


def draw_mask(shape: int, image_size: int = 32) -> np.ndarray:
    image = draw_scene([SceneObject(shape, 0, 0.0, 0.0, 6.0)], image_size)
    return (image != 30).any(axis=2)


def test_shape_masks_nonempty_and_distinct():
    masks = [draw_mask(s) for s in range(len(SHAPES))]
    for mask in masks:
        assert 5 < mask.sum() < 16 * 16  # something drawn, inside its cell
    for (i, a), (j, b) in itertools.combinations(enumerate(masks), 2):
        assert not np.array_equal(a, b), (SHAPES[i][0], SHAPES[j][0])


def test_draw_scene_colours_and_cells():
    red_circle, blue_star = concept("red", "circle"), concept("blue", "star")
    image = draw_scene(
        [SceneObject(red_circle, 0, 0.0, 0.0, 5.0), SceneObject(blue_star, 1, 1.0, -1.0, 5.0)],
        image_size=32,
    )
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    red, blue = np.array(COLORS[0][1]), np.array(COLORS[2][1])
    is_red, is_blue = (image == red).all(axis=2), (image == blue).all(axis=2)
    assert is_red[:16, :16].sum() > 20 and is_red[:, 16:].sum() == is_red[16:].sum() == 0
    # cell 1 is the top-right quadrant
    assert is_blue[:16, 16:].sum() > 10 and is_blue[16:].sum() == is_blue[:, :16].sum() == 0
    background = ~(is_red | is_blue)
    assert (image[background] == 30).all()  # no noise given


def test_draw_scene_noise_stays_on_background():
    rng = np.random.default_rng(0)
    noise = rng.uniform(-1, 1, size=(32, 32, 3))
    plain = draw_scene([SceneObject(5, 1, 0.0, 0.0, 6.0)], 32)
    noisy = draw_scene([SceneObject(5, 1, 0.0, 0.0, 6.0)], 32, noise)
    drawn = (plain != 30).any(axis=2)
    np.testing.assert_array_equal(noisy[drawn], plain[drawn])
    assert (noisy[~drawn] != 30).any()
    assert np.abs(noisy[~drawn].astype(int) - 30).max() <= 12
