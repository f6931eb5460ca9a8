"""Bad inputs to the functional losses, retrieval and top-K: a clear error or a NaN, never a
silent number (issue 11, points 1, 7 and 8); to the pacing functions and per-sample scores
(issue 13).

Each table row is (call, exception type, message regex); the message must name the
argument, the value given and what is allowed.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_plugins.functional import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    check_scores,
    class_moments,
    class_statistics,
    clip_loss,
    cwcl_loss,
    difficulty_ranking,
    ease_from_difficulty,
    ease_weights,
    el2n_scores,
    forgetting,
    forgetting_events,
    forward_transfer,
    grand_scores,
    linear_pacing,
    normalized_logits,
    prune_mask,
    resolve_pacing,
    retrieval_recall,
    root_pacing,
    sample_class_features,
    shrink_old_means,
    siglip_loss,
    statistics_from_moments,
    step_pacing,
    topk_correct,
    zero_shot_classifier,
)


def features(batch: int = 4, dim: int = 6, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(batch)
    image = F.normalize(torch.randn(batch, dim, generator=gen, dtype=torch.float64), dim=-1)
    text = F.normalize(image + torch.randn(batch, dim, generator=gen, dtype=torch.float64))
    return image.to(dtype), text.to(dtype)


IMG, TXT = features()
IMG64, TXT64 = features(dtype=torch.float64)
ONE_IMG, ONE_TXT = features(1)


def with_nan(tensor: torch.Tensor) -> torch.Tensor:
    out = tensor.clone()
    out[-1, -1] = float("nan")
    return out


def with_value(value: float) -> torch.Tensor:
    return torch.tensor(value)


# (loss, extra arguments) for each functional loss: one table serves all three
LOSSES = {
    "clip_loss": (clip_loss, {}),
    "siglip_loss": (siglip_loss, {"logit_bias": -2.0}),
    "cwcl_loss": (cwcl_loss, {}),
}

# (image, text, logit_scale, extra kwargs, exception, message)
BAD_LOSS_INPUTS = {
    "scale negative": (
        IMG,
        TXT,
        -1.0,
        {},
        ValueError,
        r"`logit_scale` must be a finite number in \(0, inf\), got -1.0",
    ),
    "scale zero": (IMG, TXT, 0, {}, ValueError, r"`logit_scale` .* \(0, inf\), got 0"),
    "scale nan": (
        IMG,
        TXT,
        math.nan,
        {},
        ValueError,
        r"`logit_scale` must be a finite number .* got nan",
    ),
    "scale inf": (
        IMG,
        TXT,
        math.inf,
        {},
        ValueError,
        r"`logit_scale` must be a finite number .* got inf",
    ),
    "scale tensor negative": (
        IMG,
        TXT,
        with_value(-2.0),
        {},
        ValueError,
        r"`logit_scale` must be positive .*got -2",
    ),
    "scale tensor zero": (
        IMG,
        TXT,
        with_value(0.0),
        {},
        ValueError,
        r"`logit_scale` must be positive .*got 0",
    ),
    "scale tensor nan": (
        IMG,
        TXT,
        with_value(math.nan),
        {},
        ValueError,
        r"`logit_scale` holds non-finite",
    ),
    "scale tensor inf": (
        IMG,
        TXT,
        with_value(math.inf),
        {},
        ValueError,
        r"`logit_scale` holds non-finite",
    ),
    "scale vector": (
        IMG,
        TXT,
        torch.full((4,), 10.0),
        {},
        ValueError,
        r"`logit_scale` must be a scalar .*shape \(4,\)",
    ),
    "scale matrix": (
        IMG,
        TXT,
        torch.full((4, 1), 10.0),
        {},
        ValueError,
        r"`logit_scale` must be a scalar .*shape \(4, 1\)",
    ),
    "scale string": (
        IMG,
        TXT,
        "10",
        {},
        TypeError,
        r"`logit_scale` must be a number, got '10' \(str\)",
    ),
    "scale bool": (IMG, TXT, True, {}, TypeError, r"`logit_scale` must be a number, got True"),
    "scale int tensor": (
        IMG,
        TXT,
        torch.tensor(10),
        {},
        TypeError,
        r"`logit_scale` must be a number or a floating-point tensor, got .* torch.int64",
    ),
    "scale less precise": (
        IMG64,
        TXT64,
        torch.tensor(10.0),
        {},
        TypeError,
        r"`logit_scale` of dtype torch.float32 is less precise than the features \(torch.float64\)",
    ),
    "scale bf16 with fp32": (
        IMG,
        TXT,
        torch.tensor(10.0, dtype=torch.bfloat16),
        {},
        TypeError,
        r"`logit_scale` of dtype torch.bfloat16",
    ),
    "mixed feature dtypes": (
        IMG,
        TXT64,
        10.0,
        {},
        TypeError,
        r"`image_features` and `text_features` must share one dtype, got torch.float32 and ",
    ),
    "integer features": (
        IMG.long(),
        TXT.long(),
        10.0,
        {},
        TypeError,
        r"`image_features` must be a floating-point tensor, got dtype torch.int64",
    ),
    "one pair": (
        ONE_IMG,
        ONE_TXT,
        10.0,
        {},
        ValueError,
        r"at least 2 image-text pairs to score against \(one pair has no negatives\), got 1",
    ),
    "nan image features": (
        with_nan(IMG),
        TXT,
        10.0,
        {},
        ValueError,
        r"^`image_features` holds non-finite values",
    ),
    "inf text features": (
        IMG,
        TXT.index_fill(1, torch.tensor([0]), math.inf),
        10.0,
        {},
        ValueError,
        r"`(text|all_text)_features` holds non-finite values",
    ),
    "nan global texts": (
        IMG,
        TXT,
        10.0,
        {
            "all_image_features": torch.cat([IMG, IMG]),
            "all_text_features": with_nan(torch.cat([TXT, TXT])),
        },
        ValueError,
        r"`all_text_features` holds non-finite values",
    ),
    "global texts of another dtype": (
        IMG,
        TXT,
        10.0,
        {
            "all_image_features": torch.cat([IMG, IMG]),
            "all_text_features": torch.cat([TXT64, TXT64]),
        },
        TypeError,
        r"must share one dtype",
    ),
    "reduction unknown": (
        IMG,
        TXT,
        10.0,
        {"reduction": "avg"},
        ValueError,
        r"`reduction` must be one of \('mean', 'sum', 'none'\), got 'avg'",
    ),
    "reduction not a string": (
        IMG,
        TXT,
        10.0,
        {"reduction": None},
        ValueError,
        r"`reduction` must be one of .* got None",
    ),
    "label_offset float": (
        IMG,
        TXT,
        10.0,
        {"label_offset": 0.5},
        TypeError,
        r"`label_offset` must be an integer.*got 0.5",
    ),
    "label_offset outside": (
        IMG,
        TXT,
        10.0,
        {"label_offset": 1},
        ValueError,
        r"`label_offset` must place the 4 local rows",
    ),
}

# chunk_size is an argument of clip_loss and siglip_loss only
BAD_CHUNK_SIZES = {
    "chunk_size zero": (0, ValueError, r"`chunk_size` must be a positive integer, got 0"),
    "chunk_size float": (
        2.5,
        TypeError,
        r"`chunk_size` must be an integer or None, got 2.5 \(float\)",
    ),
    "chunk_size string": (
        "8",
        TypeError,
        r"`chunk_size` must be an integer or None, got '8' \(str\)",
    ),
    "chunk_size bool": (True, TypeError, r"`chunk_size` must be an integer or None, got True"),
}


@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("case", list(BAD_LOSS_INPUTS))
def test_functional_losses_reject_bad_inputs(loss_name, case):
    loss, extra = LOSSES[loss_name]
    image, text, scale, kwargs, error, match = BAD_LOSS_INPUTS[case]
    if loss_name == "siglip_loss":  # it takes the global texts only
        kwargs = {k: v for k, v in kwargs.items() if k != "all_image_features"}
    with pytest.raises(error, match=match):
        loss(image, text, scale, **{**extra, **kwargs})


@pytest.mark.parametrize("loss", [clip_loss, siglip_loss])
@pytest.mark.parametrize("case", list(BAD_CHUNK_SIZES))
def test_functional_losses_reject_bad_chunk_size(loss, case):
    chunk_size, error, match = BAD_CHUNK_SIZES[case]
    with pytest.raises(error, match=match):
        loss(IMG, TXT, 10.0, chunk_size=chunk_size)


@pytest.mark.parametrize(
    ("bias", "error", "match"),
    [
        (math.nan, ValueError, r"`logit_bias` must be a finite number in \(-inf, inf\), got nan"),
        (torch.tensor(math.inf), ValueError, r"`logit_bias` holds non-finite values"),
        (torch.tensor([-1.0, -2.0]), ValueError, r"`logit_bias` must be a scalar .*shape \(2,\)"),
        (
            torch.tensor(-1, dtype=torch.int32),
            TypeError,
            r"`logit_bias` must be a number or a floating",
        ),
        ("-1", TypeError, r"`logit_bias` must be a number, got '-1'"),
    ],
)
def test_siglip_loss_rejects_bad_bias(bias, error, match):
    with pytest.raises(error, match=match):
        siglip_loss(IMG, TXT, 10.0, bias)


@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_one_element_scale_equals_the_number(loss_name):
    loss, extra = LOSSES[loss_name]
    expected = loss(IMG, TXT, 10.0, **extra)
    for scale in (torch.tensor(10.0), torch.tensor([10.0]), torch.tensor([[10.0]])):
        torch.testing.assert_close(loss(IMG, TXT, scale, **extra), expected)


def test_float32_scale_with_half_features_is_allowed():
    """Autocast keeps the scale float32 while the features are half precision."""
    scale = torch.tensor(10.0)
    for loss, extra in LOSSES.values():
        assert torch.isfinite(loss(IMG.bfloat16(), TXT.bfloat16(), scale, **extra))


def test_local_batch_of_one_against_a_global_batch_is_allowed():
    """Under DDP a rank may hold one row of a global batch of two: that is no error."""
    image, text = features(2)
    expected = clip_loss(image, text, 10.0, reduction="none")
    for offset in (0, 1):
        rows = slice(offset, offset + 1)
        local = clip_loss(
            image[rows],
            text[rows],
            10.0,
            all_image_features=image,
            all_text_features=text,
            label_offset=offset,
            reduction="none",
        )
        torch.testing.assert_close(local, expected[rows])
        cwcl = cwcl_loss(
            image[rows], text[rows], 10.0, all_image_features=image, all_text_features=text,
            label_offset=offset,
        )  # fmt: skip
        assert torch.isfinite(cwcl)
        siglip = siglip_loss(
            image[rows], text[rows], 10.0, all_text_features=text, label_offset=offset
        )
        assert torch.isfinite(siglip)
    # another rank's single text is a block of negatives only, also no error
    assert torch.isfinite(
        siglip_loss(image[:1], text[:1], 10.0, all_text_features=text[1:], label_offset=None)
    )


def test_local_batch_of_none_needs_no_mean():
    image, text = features(2)
    empty = image[:0]
    out = clip_loss(empty, text[:0], 10.0, all_image_features=image, all_text_features=text,
                    label_offset=2, reduction="none")  # fmt: skip
    assert out.shape == (0,)
    with pytest.raises(
        ValueError, match=r"`image_features` holds no rows.*reduction='sum' or 'none'"
    ):
        clip_loss(
            empty, text[:0], 10.0, all_image_features=image, all_text_features=text, label_offset=2
        )


# ---------------------------------------------------------------- retrieval and top-K

BAD_RETRIEVAL = [
    ({"top_k": 1}, TypeError, r"`top_k` must be a sequence of integers, got 1 \(int\)"),
    ({"top_k": "15"}, TypeError, r"`top_k` must be a sequence of integers, got '15'"),
    ({"top_k": (1.5,)}, TypeError, r"`top_k\[0\]` must be an integer, got 1.5"),
    ({"top_k": (0,)}, ValueError, r"`top_k\[0\]` must be a positive integer, got 0"),
    ({"top_k": ()}, ValueError, r"`top_k` must hold at least one K"),
    ({"chunk_size": 0}, ValueError, r"`chunk_size` must be a positive integer, got 0"),
    ({"chunk_size": 2.0}, TypeError, r"`chunk_size` must be an integer, got 2.0"),
    ({"chunk_size": None}, TypeError, r"`chunk_size` must be an integer, got None"),
    ({"text_features": TXT64}, TypeError, r"must share one dtype"),
    (
        {"text_features": TXT[:3]},
        ValueError,
        r"`image_features` and `text_features` must have equal shapes",
    ),
    ({"image_features": IMG[0], "text_features": TXT[0]}, ValueError, r"must be 2-D"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_RETRIEVAL)
def test_retrieval_recall_rejects_bad_inputs(kwargs, error, match):
    with pytest.raises(error, match=match):
        retrieval_recall(**{"image_features": IMG, "text_features": TXT, **kwargs})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_retrieval_recall_non_finite_is_nan_with_a_warning(bad):
    # a NaN image row used to rank first (NaN compares false): recall 1.0
    images = torch.eye(4)
    texts = images.clone()
    images[2, 0] = bad
    with pytest.warns(UserWarning, match=r"1 of 4 image queries and 4 of 4 text queries"):
        i2t, t2i = retrieval_recall(images, texts, top_k=(1, 4), chunk_size=3)
    assert torch.isnan(i2t).all() and torch.isnan(t2i).all()


def test_retrieval_recall_all_nan_is_not_perfect():
    images = torch.full((4, 3), math.nan)
    with pytest.warns(UserWarning, match="non-finite similarity"):
        i2t, t2i = retrieval_recall(images, F.normalize(torch.randn(4, 3), dim=-1), top_k=(1,))
    assert math.isnan(i2t.item()) and math.isnan(t2i.item())


def test_retrieval_recall_overflowing_similarity_is_non_finite():
    """Finite features whose product overflows give inf scores: NaN too."""
    images = torch.eye(3) * 3e38
    with pytest.warns(UserWarning, match="non-finite"):
        i2t, _ = retrieval_recall(images, images, top_k=(1,))
    assert math.isnan(i2t.item())


BAD_TOPK = [
    (
        torch.zeros(2, 3),
        torch.tensor([0, 3]),
        (1,),
        ValueError,
        r"`target` must hold class ids in \[0, 3\) .*got 3",
    ),
    (
        torch.zeros(2, 3),
        torch.tensor([-2, 0]),
        (1,),
        ValueError,
        r"`target` must hold class ids in \[0, 3\) .*got -2",
    ),
    (
        torch.zeros(2, 3),
        torch.tensor([0.0, 1.0]),
        (1,),
        TypeError,
        r"`target` must hold integer class ids, got dtype torch.float32",
    ),
    (
        torch.zeros(2, 3),
        torch.tensor([True, False]),
        (1,),
        TypeError,
        r"`target` must hold integer class ids",
    ),
    (torch.zeros(2, 3), [0, 1], (1,), TypeError, r"`target` must be a tensor, got list"),
    ([[0.0, 1.0]], torch.tensor([0]), (1,), TypeError, r"`logits` must be a tensor, got list"),
    (
        torch.zeros(2, 3),
        torch.tensor([0, 1]),
        1,
        TypeError,
        r"`top_k` must be a sequence of integers",
    ),
    (
        torch.zeros(2, 3),
        torch.tensor([0, 1]),
        (0,),
        ValueError,
        r"`top_k\[0\]` must be a positive integer",
    ),
    (
        torch.zeros(2, 3),
        torch.tensor([0, 1]),
        (4,),
        ValueError,
        r"`top_k` \(4,\) exceeds the number of classes 3",
    ),
    (
        torch.zeros(2, 3),
        torch.tensor([0, 1, 2]),
        (1,),
        ValueError,
        r"`logits` must be \[B, C\] and `target` \[B\]",
    ),
]


@pytest.mark.parametrize(("logits", "target", "top_k", "error", "match"), BAD_TOPK)
def test_topk_correct_rejects_bad_inputs(logits, target, top_k, error, match):
    with pytest.raises(error, match=match):
        topk_correct(logits, target, top_k)


def test_topk_correct_all_nan_is_nan_not_a_quarter():
    hits = topk_correct(torch.full((8, 4), math.nan), torch.arange(8) % 4, top_k=(1,))
    assert torch.isnan(hits.mean())


BAD_ZERO_SHOT = [
    ({"class_names": "cat"}, TypeError, r"`class_names` must be a list of class names"),
    ({"class_names": []}, ValueError, r"`class_names` is empty"),
    ({"templates": "a {}"}, ValueError, r"`templates` must be a non-empty list"),
    ({"templates": ["a photo"]}, ValueError, r"`templates` entry 'a photo' has no '\{\}'"),
    ({"chunk_size": 0}, ValueError, r"`chunk_size` must be a positive integer, got 0"),
    ({"chunk_size": "2"}, TypeError, r"`chunk_size` must be an integer, got '2'"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_ZERO_SHOT)
def test_zero_shot_classifier_rejects_bad_inputs(kwargs, error, match):
    def encode(prompts):
        return torch.eye(2)[[0] * len(prompts)]

    arguments = {"class_names": ["cat", "dog"], "templates": ["a {}"], **kwargs}
    with pytest.raises(error, match=match):
        zero_shot_classifier(encode, **arguments)


# ------------------------------------------------------------------ pacing (issue 13)
BAD_PACING = [
    (lambda: linear_pacing(0, 10, start=0.0), ValueError, r"`start` must be .* \(0, 1\], got 0\.0"),
    (lambda: linear_pacing(0, 10, start=1.5), ValueError, r"`start` must be .* \(0, 1\], got 1\.5"),
    (lambda: root_pacing(0, 10, start=-0.1), ValueError, r"`start` .* \(0, 1\], got -0\.1"),
    (lambda: root_pacing(0, 10, start=math.nan), ValueError, r"`start` must be a finite"),
    (lambda: linear_pacing(0, 0), ValueError, r"`total_steps` must be a positive integer, got 0"),
    (lambda: linear_pacing(0, 2.5), TypeError, r"`total_steps` must be an integer, got 2\.5"),
    (lambda: linear_pacing(-1, 10), ValueError, r"`step` must be a non-negative integer, got -1"),
    (lambda: root_pacing(0, 10, power=0.0), ValueError, r"`power` .* \(0, inf\), got 0\.0"),
    (lambda: step_pacing(0, 10, num_stages=0), ValueError, r"`num_stages` .* positive .* got 0"),
    (lambda: resolve_pacing("root", 0), ValueError, r"`total_steps` must be a positive integer"),
    (lambda: resolve_pacing("root", 10, start=0), ValueError, r"`start` .* \(0, 1\], got 0"),
    (
        lambda: resolve_pacing("cubic", 10),
        ValueError,
        r"`pacing` must be one of \['geometric', 'linear', 'root', 'step'\] .*got 'cubic'",
    ),
    (lambda: resolve_pacing(0.5, 10), TypeError, r"`pacing` must be a name of .* got 0\.5"),
    (lambda: resolve_pacing(lambda s: 0.0, 10)(0), ValueError, r"`pacing\(0\)` .* got 0\.0"),
    (lambda: resolve_pacing(lambda s: 1.5, 10)(4), ValueError, r"`pacing\(4\)` .* got 1\.5"),
    (lambda: resolve_pacing(lambda s: math.nan, 10)(1), ValueError, r"`pacing\(1\)` .* nan"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_PACING)
def test_pacing_rejects_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------ per-sample scores (issue 13)
NAN_SCORES = torch.tensor([0.1, math.nan, 0.3, math.inf, -math.inf])

BAD_SCORES = [
    (
        lambda: check_scores(torch.ones(4), "difficulty", 5),
        ValueError,
        r"`difficulty` must hold one entry per sample \(5\), got 4",
    ),
    (
        lambda: check_scores(NAN_SCORES, "difficulty", 5),
        ValueError,
        r"`difficulty` must be finite, but 3 of its 5 values are not; the first at index 1 \(nan\)",
    ),
    (
        lambda: check_scores(torch.ones(2, 3), "scores"),
        ValueError,
        r"`scores` must be 1-D \(one score per sample\), got shape \(2, 3\)",
    ),
    (lambda: check_scores("abc", "scores"), TypeError, r"`scores` must be a tensor of numbers"),
    (
        lambda: prune_mask(NAN_SCORES, 0.5),
        ValueError,
        r"`scores` must be finite, but 3 of its 5 values are not; the first at index 1",
    ),
    (
        lambda: prune_mask(torch.tensor([0.0, 1.0, math.inf]), 0.5),
        ValueError,
        r"3 values are not; the first at index 2 \(inf\)",
    ),
    (lambda: prune_mask(torch.ones(4), 1.0), ValueError, r"`prune` .* \[0, 1\), got 1\.0"),
    (lambda: prune_mask(torch.ones(4), -0.1), ValueError, r"`prune` .* \[0, 1\), got -0\.1"),
    (lambda: prune_mask(torch.ones(4), math.nan), ValueError, r"`prune` must be a finite"),
    (lambda: prune_mask(torch.ones(4), 0.5, 1.0), ValueError, r"`offset` .* \[0, 1\), got 1\.0"),
    (lambda: prune_mask(torch.ones(4), 0.5, -0.5), ValueError, r"`offset` .* got -0\.5"),
    (
        lambda: prune_mask(torch.ones(4), 0.9),
        ValueError,
        r"`prune`=0\.9 would keep none of the 4 samples",
    ),
    (
        lambda: ease_weights(torch.tensor([0.5, 1.2, -0.1]), 0.5),
        ValueError,
        r"`ease` must be finite and in \[0, 1\], but 2 of its 3 values are not; the first at "
        r"index 1 \(1\.2\)",
    ),
    (
        lambda: ease_weights(torch.tensor([0.5]), 1.5),
        ValueError,
        r"`progress` .* \[0, 1\], got 1\.5",
    ),
    (
        lambda: difficulty_ranking(torch.tensor([0.0, math.nan])),
        ValueError,
        r"`difficulty` must be finite, but 1 of its 2 values are not; the first at index 1",
    ),
    (
        lambda: ease_from_difficulty(torch.zeros(2, 2)),
        ValueError,
        r"`difficulty` must be 1-D",
    ),
    (
        lambda: el2n_scores(torch.zeros(3, 4), torch.tensor([0, 1])),
        ValueError,
        r"`logits` must be \[B, C\] and `targets` \[B\], got shapes \(3, 4\) and \(2,\)",
    ),
    (
        lambda: el2n_scores(torch.zeros(2, 4), torch.tensor([0, 4])),
        ValueError,
        r"`targets` must be class indices in \[0, 4\), got values from 0 to 4",
    ),
    (
        lambda: el2n_scores(torch.zeros(2, 4), torch.tensor([0.0, 1.0])),
        TypeError,
        r"`targets` must be an integer tensor, got dtype torch\.float32",
    ),
    (
        lambda: el2n_scores(torch.zeros(2, 4, dtype=torch.long), torch.tensor([0, 1])),
        TypeError,
        r"`logits` must be a floating-point tensor, got dtype torch\.int64",
    ),
    (
        lambda: forgetting_events(torch.ones(3, 4, dtype=torch.long)),
        TypeError,
        r"`correct` must be a bool tensor \(use `\.bool\(\)`\), got torch\.int64",
    ),
    (
        lambda: forgetting_events(torch.ones(4, dtype=torch.bool)),
        ValueError,
        r"`correct` must be \[E, N\] with at least one row .* got shape \(4,\)",
    ),
    (
        lambda: forgetting_events(torch.ones(0, 4, dtype=torch.bool)),
        ValueError,
        r"got shape \(0, 4\)",
    ),
    (
        lambda: grand_scores(lambda p: p["w"].sum(), {"w": torch.ones(3)}),
        ValueError,
        r"`loss_fn` must return the \[B\] per-sample losses .* got \(\)",
    ),
    (
        lambda: grand_scores(lambda p: p["w"], {}),
        TypeError,
        r"`params` must be a non-empty dict of tensors",
    ),
    (
        lambda: grand_scores(lambda p: p["w"], {"w": torch.ones(3, dtype=torch.long)}),
        TypeError,
        r"`params\['w'\]` must be a floating-point tensor, got torch\.int64",
    ),
    (
        lambda: grand_scores(lambda p: p["w"], {"w": torch.ones(3)}, chunk_size=0),
        ValueError,
        r"`chunk_size` must be a positive integer, got 0",
    ),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_SCORES)
def test_sample_scores_reject_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------------ mixing (issue 14)
def _skill_it(**kwargs):
    from lightning_plugins.functional import skill_it_weights

    settings = {
        "prior": [1.0, 1.0, 1.0],
        "graph": torch.eye(3),
        "losses_window": torch.ones(2, 3),
        "eta": 0.5,
        **kwargs,
    }
    return skill_it_weights(**settings)


def _dga(**kwargs):
    from lightning_plugins.functional import dga_weights

    settings = {
        "alpha": [0.5, 0.5],
        "domain_grads": torch.ones(2, 4),
        "target_grad": torch.ones(4),
        "eta": 1.0,
        "beta": 0.5,
        **kwargs,
    }
    return dga_weights(**settings)


def _check_weights(weights, num_sources=3):
    from lightning_plugins.functional import check_mixture_weights

    return check_mixture_weights(weights, "weights", num_sources)


BAD_MIXING = [
    (
        lambda: _check_weights([1.0, -0.5, 1.0]),
        ValueError,
        r"`weights` must be finite and non-negative, got -0\.5 at index 1",
    ),
    (lambda: _check_weights([1.0, math.nan, 1.0]), ValueError, r"`weights`.*nan at index 1"),
    (lambda: _check_weights([1.0, math.inf, 1.0]), ValueError, r"`weights`.*inf at index 1"),
    (
        lambda: _check_weights([1.0, 1.0]),
        ValueError,
        r"`weights` must hold one weight per source \(3\), got 2",
    ),
    (
        lambda: _check_weights([0, 0, 0]),
        ValueError,
        r"`weights` must not be all 0.*\[0\.0, 0\.0, 0\.0\]",
    ),
    (lambda: _check_weights([], None), ValueError, r"`weights` must hold at least one weight"),
    (lambda: _check_weights(torch.ones(3, 1)), ValueError, r"`weights` must be 1-D.*\(3, 1\)"),
    (lambda: _check_weights("abc"), TypeError, r"`weights` must be a tensor, array or list.*'abc'"),
    (
        lambda: _check_weights([1, 2 + 1j, 3]),
        TypeError,
        r"`weights` must hold real numbers.*complex",
    ),
    (
        lambda: _skill_it(graph=torch.eye(2)),
        ValueError,
        r"`graph` must be a \[k, k\] = \[3, 3\].*\(2, 2\)",
    ),
    (lambda: _skill_it(graph=torch.ones(3)), ValueError, r"`graph` must be a \[k, k\].*\(3,\)"),
    (
        lambda: _skill_it(graph=-torch.eye(3)),
        ValueError,
        r"`graph` must be finite, >= 0, got -1\.0 at index \[0, 0\]",
    ),
    (lambda: _skill_it(graph=torch.eye(3) * math.nan), ValueError, r"`graph` must be finite.*nan"),
    (lambda: _skill_it(graph=torch.eye(3) / 0), ValueError, r"`graph` must be finite.*inf"),
    (lambda: _skill_it(graph="eye"), TypeError, r"`graph` must be a tensor.*'eye'"),
    (
        lambda: _skill_it(losses_window=torch.ones(3)),
        ValueError,
        r"`losses_window` must be \[w, k\] = \[w, 3\].*\(3,\)",
    ),
    (lambda: _skill_it(losses_window=torch.ones(2, 4)), ValueError, r"`losses_window`.*\(2, 4\)"),
    (
        lambda: _skill_it(losses_window=torch.ones(0, 3)),
        ValueError,
        r"`losses_window`.*w >= 1.*\(0, 3\)",
    ),
    (
        lambda: _skill_it(losses_window=torch.full((2, 3), math.nan)),
        ValueError,
        r"`losses_window` must be finite, got nan",
    ),
    (lambda: _skill_it(eta=math.inf), ValueError, r"`eta` must be a finite number.*inf"),
    (lambda: _skill_it(eta=math.nan), ValueError, r"`eta` must be a finite number.*nan"),
    (lambda: _skill_it(eta="0.5"), TypeError, r"`eta` must be a number, got '0\.5'"),
    (
        lambda: _skill_it(prior=[1.0, -1.0, 1.0]),
        ValueError,
        r"`prior` must be finite and non-negative.*-1\.0",
    ),
    (lambda: _skill_it(prior=[0.0, 0.0, 0.0]), ValueError, r"`prior` must not be all 0"),
    (
        lambda: _skill_it(target=[3]),
        ValueError,
        r"`target\[0\]` must be an integer in \[0, 2\], got 3",
    ),
    (
        lambda: _skill_it(target=[1, 1]),
        ValueError,
        r"`target` must not repeat a skill, got \[1, 1\]",
    ),
    (lambda: _skill_it(target=[]), ValueError, r"`target` must name at least one skill"),
    (lambda: _skill_it(target=[0.5]), TypeError, r"`target\[0\]` must be an integer, got 0\.5"),
    (
        lambda: _skill_it(target=1),
        TypeError,
        r"`target` must be a sequence of skill indices.*1 \(int\)",
    ),
    (
        lambda: _skill_it(losses_window=torch.full((2, 3), 1e308, dtype=torch.float64), eta=10.0),
        ValueError,
        r"overflows float64.*normalise the losses",
    ),
    (lambda: _dga(beta=1.5), ValueError, r"`beta` must be a finite number in \[0, 1\], got 1\.5"),
    (lambda: _dga(beta=-0.1), ValueError, r"`beta` must be a finite number in \[0, 1\], got -0\.1"),
    (lambda: _dga(eta=math.inf), ValueError, r"`eta` must be a finite number.*inf"),
    (
        lambda: _dga(alpha=[0.5, -0.5]),
        ValueError,
        r"`alpha` must be finite and non-negative.*-0\.5",
    ),
    (
        lambda: _dga(domain_grads=torch.ones(3, 4)),
        ValueError,
        r"`domain_grads` must hold one gradient per domain \(2.*\(3, 4\)",
    ),
    (
        lambda: _dga(domain_grads=[torch.ones(4)]),
        ValueError,
        r"`domain_grads` must hold one gradient per domain \(2.*got 1",
    ),
    (
        lambda: _dga(domain_grads=[torch.ones(4), torch.ones(5)]),
        ValueError,
        r"same number of entries, got \[4, 5\]",
    ),
    (
        lambda: _dga(domain_grads="g"),
        TypeError,
        r"`domain_grads` must be a \[k, P\] tensor or a list.*str",
    ),
    (
        lambda: _dga(target_grad=torch.ones(5)),
        ValueError,
        r"`domain_grads` have 4 entries each but `target_grad` has 5",
    ),
    (
        lambda: _dga(target_grad=torch.full((4,), math.nan)),
        ValueError,
        r"`target_grad` must be finite, got nan",
    ),
    (
        lambda: _dga(domain_grads=torch.full((2, 4), math.inf)),
        ValueError,
        r"`domain_grads` must be finite, got inf at index \[0, 0\]",
    ),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_MIXING)
def test_mixing_rejects_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- class statistics and logit normalisation of SLCA (issue 15) ---

_CS_X = torch.arange(24, dtype=torch.float32).reshape(6, 4).sin()
_CS_Y = torch.tensor([3, 3, 5, 5, 5, 3])


def _stats(**kwargs):
    args = {"features": _CS_X, "labels": _CS_Y, "classes": [3, 5], "kind": "full"}
    args.update(kwargs)
    return class_statistics(**args)


BAD_CLASS_STATISTICS = [
    (lambda: _stats(kind="spherical"), ValueError, r"`kind` must be one of \('full', "),
    (lambda: _stats(kind="lowrank"), ValueError, r"`rank` must be given with kind='lowrank'"),
    (
        lambda: _stats(kind="lowrank", rank=0),
        ValueError,
        r"`rank` must be an integer in \[1, 4\], got 0",
    ),
    (
        lambda: _stats(kind="lowrank", rank=5),
        ValueError,
        r"`rank` must be an integer in \[1, 4\], got 5",
    ),
    (lambda: _stats(kind="lowrank", rank=2.0), TypeError, r"`rank` must be an integer"),
    (
        lambda: _stats(kind="full", rank=2),
        ValueError,
        r"`rank` is only used with kind='lowrank'; got rank=2 with kind='full'",
    ),
    (
        lambda: _stats(kind="diagonal", rank=2),
        ValueError,
        r"`rank` is only used with kind='lowrank'",
    ),
    (
        lambda: _stats(classes=[3, 4]),
        ValueError,
        r"`labels` holds class 5, which is not one of `classes` \[3, 4\]",
    ),
    (lambda: _stats(classes=[3, 5, 3]), ValueError, r"`classes` must hold distinct class ids"),
    (lambda: _stats(classes=[]), ValueError, r"`classes` must hold at least one class id"),
    (
        lambda: _stats(classes="35"),
        TypeError,
        r"`classes` must be a 1-D integer tensor or a sequence",
    ),
    (
        lambda: _stats(classes=[3, 5, 7]),
        ValueError,
        r"class 7 has 0 sample\(s\); its covariance needs at least 2",
    ),
    (
        lambda: _stats(labels=torch.tensor([3, 5, 5, 5, 5, 5])),
        ValueError,
        r"class 3 has 1 sample\(s\); its covariance needs at least 2",
    ),
    (
        lambda: _stats(kind="diagonal", labels=torch.tensor([3, 5, 5, 5, 5, 5])),
        ValueError,
        r"class 3 has 1 sample",
    ),
    (
        lambda: _stats(labels=_CS_Y.float()),
        TypeError,
        r"`labels` must be an integer \[N\] tensor, got torch.float32",
    ),
    (
        lambda: _stats(labels=_CS_Y[:5]),
        ValueError,
        r"`labels` must be \[N\] with one label per row of `features` \(6\)",
    ),
    (
        lambda: _stats(features=_CS_X.long()),
        TypeError,
        r"`features` must be a floating \[N, d\] tensor",
    ),
    (lambda: _stats(features=_CS_X[None]), ValueError, r"`features` must be 2-D \[N, d\]"),
    (
        lambda: _stats(eps=-1.0),
        ValueError,
        r"`eps` must be a finite number in \[0, inf\), got -1.0",
    ),
    (lambda: class_moments(_CS_X, _CS_Y, [3, 5], kind="low"), ValueError, r"`kind` must be one of"),
    (
        lambda: statistics_from_moments(class_moments(_CS_X, _CS_Y, [3, 5]), [3], "full"),
        ValueError,
        r"`classes` must hold one id per row of the moments \(2\), got 1",
    ),
    (
        lambda: sample_class_features(_stats(), 0),
        ValueError,
        r"`num_per_class` must be a positive integer, got 0",
    ),
    (
        lambda: sample_class_features({"classes": torch.tensor([1]), "mean": torch.zeros(1, 2)}, 2),
        ValueError,
        r"`statistics` must hold 'covariance', 'variance' or 'factor'",
    ),
    (
        lambda: sample_class_features(
            {
                "classes": torch.tensor([1]),
                "mean": torch.zeros(1, 2),
                "covariance": -torch.eye(2)[None],
            },
            2,
        ),
        ValueError,
        r"the covariance of class 1 is not positive definite",
    ),
    (
        lambda: normalized_logits(torch.ones(2, 3), [1, 2], temperature=0.0),
        ValueError,
        r"`temperature` must be a finite number in \(0, inf\), got 0.0",
    ),
    (
        lambda: normalized_logits(torch.ones(2, 3), [1, 2], temperature=-0.1),
        ValueError,
        r"`temperature` must be a finite number in \(0, inf\)",
    ),
    (
        lambda: normalized_logits(torch.ones(2, 3), [1, 1]),
        ValueError,
        r"`task_sizes` \[1, 1\] must sum to the number of logits \(3\), got 2",
    ),
    (
        lambda: normalized_logits(torch.ones(2, 3), [0, 3]),
        ValueError,
        r"`task_sizes\[0\]` must be a positive integer, got 0",
    ),
    (
        lambda: normalized_logits(torch.ones(2, 3), []),
        ValueError,
        r"`task_sizes` must hold at least one task",
    ),
    (
        lambda: normalized_logits(torch.ones(3), [3]),
        ValueError,
        r"`logits` must be a 2-D \[batch, classes\] tensor, got \(3,\)",
    ),
    (
        lambda: shrink_old_means(torch.ones(2, 2), [0, 2], current_task=1),
        ValueError,
        r"`class_tasks` must lie in \[0, current_task=1\]",
    ),
    (
        lambda: shrink_old_means(torch.ones(2, 2), [0], current_task=1),
        ValueError,
        r"`class_tasks` must hold one integer task index per class \(2\)",
    ),
    (
        lambda: shrink_old_means(torch.ones(2, 2), [0, 1], current_task=1, shrink=1.5),
        ValueError,
        r"`shrink` must be a finite number in \[0, 1\]",
    ),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_CLASS_STATISTICS)
def test_class_statistics_reject_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- continual metrics (issue 15)

_R = torch.tensor([[0.9, math.nan], [0.6, 0.8]])

BAD_CONTINUAL = [
    (
        lambda: average_accuracy([[0.9]]),
        TypeError,
        r"`accuracy_matrix` must be a \[T, T\] float tensor, got list",
    ),
    (
        lambda: forgetting(torch.ones(2, 2, dtype=torch.long)),
        TypeError,
        r"`accuracy_matrix` must be a floating-point tensor, got dtype torch.int64",
    ),
    (
        lambda: backward_transfer(torch.ones(2, 3)),
        ValueError,
        r"`accuracy_matrix` must be a square \[T, T\] tensor .*got shape \(2, 3\)",
    ),
    (
        lambda: average_incremental_accuracy(torch.ones(0, 0)),
        ValueError,
        r"`accuracy_matrix` must be a square \[T, T\] tensor with T >= 1",
    ),
    (
        lambda: forgetting(torch.ones(1, 1)),
        ValueError,
        r"forgetting needs at least 2 tasks \(rows of `accuracy_matrix`\), got shape \(1, 1\)",
    ),
    (
        lambda: average_accuracy(_R, step=2),
        ValueError,
        r"`step` must be an integer in \[0, 1\], got 2",
    ),
    (lambda: average_accuracy(_R, step=0.5), TypeError, r"`step` must be an integer"),
    (
        lambda: average_accuracy(torch.tensor([[0.9, 0.1], [math.nan, 0.8]])),
        ValueError,
        r"`accuracy_matrix`\[1, 0\] is not measured \(NaN\), got nan",
    ),
    (
        lambda: backward_transfer(torch.tensor([[math.inf, 0.1], [0.5, 0.8]])),
        ValueError,
        r"`accuracy_matrix`\[0, 0\] is not finite, got inf",
    ),
    (
        lambda: forward_transfer(_R, torch.zeros(2)),
        ValueError,
        r"`accuracy_matrix`\[0, 1\] is not measured \(NaN\)",
    ),
    (
        lambda: forward_transfer(torch.ones(2, 2), torch.zeros(3)),
        ValueError,
        r"`baseline` must have shape \(2,\), one accuracy per task .*got \(3,\)",
    ),
    (
        lambda: forward_transfer(torch.ones(2, 2), [0.0, 0.1]),
        TypeError,
        r"`baseline` must be a \[T\] floating-point tensor .*got list",
    ),
    (
        lambda: forward_transfer(torch.ones(2, 2), torch.tensor([0.0, math.nan])),
        ValueError,
        r"`baseline`\[1\] is not measured \(NaN\), got nan",
    ),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_CONTINUAL)
def test_continual_metrics_reject_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()
