"""``cwcl_loss`` against a naive loop over the formula of Srinivasa et al. (2023)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_plugins.functional.clip_loss import clip_loss
from lightning_plugins.functional.cwcl_loss import cwcl_loss

TOL64 = {"rtol": 1e-9, "atol": 1e-12}
SCALE = 10.0


def features(batch: int, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float64 image and (correlated) text features."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    text = image + torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def naive_cwcl(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: float,
    frozen: str = "text",
    symmetric_soft: bool = False,
    detach_weights: bool = True,
) -> torch.Tensor:
    """Per-sample CWCL, one scalar at a time, straight from the paper's formula."""
    p, q = (text, image) if frozen == "text" else (image, text)
    n = p.shape[0]
    weight_source = p.detach() if detach_weights else p
    losses = []
    for i in range(n):
        w = [
            (F.cosine_similarity(weight_source[i], weight_source[j], dim=0) + 1) / 2
            for j in range(n)
        ]
        total = sum(w)
        logits_pq = [scale * torch.dot(p[i], q[j]) for j in range(n)]
        lse_pq = torch.logsumexp(torch.stack(logits_pq), dim=0)
        frozen_dir = -sum(w[j] / total * (logits_pq[j] - lse_pq) for j in range(n))
        logits_qp = [scale * torch.dot(q[i], p[j]) for j in range(n)]
        lse_qp = torch.logsumexp(torch.stack(logits_qp), dim=0)
        if symmetric_soft:
            trained_dir = -sum(w[j] / total * (logits_qp[j] - lse_qp) for j in range(n))
        else:
            trained_dir = -(logits_qp[i] - lse_qp)
        losses.append((frozen_dir + trained_dir) / 2)
    return torch.stack(losses)


def leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("batch", [2, 5, 9])
@pytest.mark.parametrize("frozen", ["text", "image"])
@pytest.mark.parametrize("symmetric_soft", [False, True])
def test_matches_naive_loop_with_gradients(batch, frozen, symmetric_soft) -> None:
    image, text = features(batch, seed=batch)
    img, txt, scale = leaves(image, text, torch.tensor(SCALE, dtype=torch.float64))
    got = cwcl_loss(img, txt, scale, frozen=frozen, symmetric_soft=symmetric_soft)
    got.backward()
    r_img, r_txt, r_scale = leaves(image, text, torch.tensor(SCALE, dtype=torch.float64))
    expected = naive_cwcl(r_img, r_txt, r_scale, frozen, symmetric_soft).mean()
    expected.backward()
    torch.testing.assert_close(got, expected, **TOL64)
    torch.testing.assert_close(img.grad, r_img.grad, **TOL64)
    torch.testing.assert_close(txt.grad, r_txt.grad, **TOL64)
    torch.testing.assert_close(scale.grad, r_scale.grad, **TOL64)


def test_reductions() -> None:
    image, text = features(5)
    per_sample = cwcl_loss(image, text, SCALE, reduction="none")
    assert per_sample.shape == (5,)
    torch.testing.assert_close(per_sample, naive_cwcl(image, text, SCALE), **TOL64)
    torch.testing.assert_close(cwcl_loss(image, text, SCALE), per_sample.mean(), **TOL64)
    torch.testing.assert_close(cwcl_loss(image, text, SCALE, reduction="sum"), per_sample.sum())


def test_frozen_image_is_frozen_text_with_towers_swapped() -> None:
    image, text = features(6, seed=3)
    torch.testing.assert_close(
        cwcl_loss(image, text, SCALE, frozen="image", reduction="none"),
        cwcl_loss(text, image, SCALE, frozen="text", reduction="none"),
        **TOL64,
    )


def test_orthogonal_frozen_features_weigh_self_one_and_others_half() -> None:
    """cos = 0 off the diagonal: w_ii = 1, w_ij = 1/2, then each row is normalised."""
    batch = 4
    text = torch.eye(batch, dtype=torch.float64)
    image, _ = features(batch, dim=batch, seed=4)
    weights = torch.full((batch, batch), 0.5, dtype=torch.float64).fill_diagonal_(1.0)
    weights = weights / weights.sum(dim=1, keepdim=True)
    logits = SCALE * text @ image.T
    frozen_dir = -(weights * logits.log_softmax(dim=1)).sum(dim=1)
    trained_dir = F.cross_entropy(SCALE * image @ text.T, torch.arange(batch), reduction="none")
    got = cwcl_loss(image, text, SCALE, reduction="none")
    torch.testing.assert_close(got, (frozen_dir + trained_dir) / 2, **TOL64)


@pytest.mark.parametrize("symmetric_soft", [False, True])
@pytest.mark.parametrize("frozen", ["text", "image"])
def test_one_hot_weights_give_the_clip_loss(frozen, symmetric_soft) -> None:
    """Antipodal frozen pairs have cos = -1, so the weights are the identity."""
    image, text = features(2, seed=5)
    antipodal = F.normalize(torch.tensor([[0.6, -0.8, 0.0], [-0.6, 0.8, 0.0]]), dim=-1).double()
    other = image[:, :3] if frozen == "text" else text[:, :3]
    other = F.normalize(other, dim=-1)
    pair = (other, antipodal) if frozen == "text" else (antipodal, other)
    got = cwcl_loss(*pair, SCALE, frozen=frozen, symmetric_soft=symmetric_soft, reduction="none")
    torch.testing.assert_close(got, clip_loss(*pair, SCALE, reduction="none"), **TOL64)


@pytest.mark.parametrize("frozen", ["text", "image"])
def test_no_gradient_through_the_weights(frozen) -> None:
    """The frozen features get gradient only through the logits, never through w_ij."""
    image, text = features(5, seed=6)
    img, txt = leaves(image, text)
    cwcl_loss(img, txt, SCALE, frozen=frozen).backward()
    detached = leaves(image, text)
    naive_cwcl(*detached, SCALE, frozen, detach_weights=True).mean().backward()
    through_weights = leaves(image, text)
    naive_cwcl(*through_weights, SCALE, frozen, detach_weights=False).mean().backward()
    index = 1 if frozen == "text" else 0
    got = (img, txt)[index].grad
    torch.testing.assert_close(got, detached[index].grad, **TOL64)
    assert not torch.allclose(got, through_weights[index].grad)


@pytest.mark.parametrize("frozen", ["text", "image"])
@pytest.mark.parametrize("symmetric_soft", [False, True])
def test_local_loss_chunks_average_to_the_global_loss(frozen, symmetric_soft) -> None:
    """Rows split as over 3 ranks: per-sample losses and gradients equal the global ones."""
    chunk, ranks = 2, 3
    image, text = features(chunk * ranks, seed=7)
    img, txt = leaves(image, text)
    expected = cwcl_loss(
        img, txt, SCALE, frozen=frozen, symmetric_soft=symmetric_soft, reduction="none"
    )
    expected.mean().backward()
    all_img, all_txt = leaves(image, text)
    parts = [
        cwcl_loss(
            all_img[r * chunk : (r + 1) * chunk],
            all_txt[r * chunk : (r + 1) * chunk],
            SCALE,
            frozen=frozen,
            all_image_features=all_img,
            all_text_features=all_txt,
            label_offset=r * chunk,
            symmetric_soft=symmetric_soft,
            reduction="none",
        )
        for r in range(ranks)
    ]
    torch.testing.assert_close(torch.cat(parts), expected.detach(), **TOL64)
    mean_of_means = torch.stack([part.mean() for part in parts]).mean()
    torch.testing.assert_close(mean_of_means, expected.mean().detach(), **TOL64)
    mean_of_means.backward()
    torch.testing.assert_close(all_img.grad, img.grad, **TOL64)
    torch.testing.assert_close(all_txt.grad, txt.grad, **TOL64)


def test_weights_use_cosines_of_unnormalised_frozen_features() -> None:
    """Doubling the texts and halving the scale keeps logits and cosines, so the loss."""
    image, text = features(4, seed=8)
    scaled = cwcl_loss(image, 2.0 * text, SCALE / 2.0, reduction="none")
    torch.testing.assert_close(scaled, naive_cwcl(image, text, SCALE), **TOL64)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"frozen": "audio"}, r"`frozen` must be one of \('text', 'image'\), got 'audio'"),
        ({"reduction": "mena"}, r"`reduction`.*'mena'"),
        ({"label_offset": 3}, r"`label_offset`.*got 3"),
        ({"all_text_features": torch.randn(6, 6)}, r"same number of rows"),
        ({"all_image_features": torch.randn(6, 5)}, r"`all_image_features` must be \[N, 6\]"),
    ],
)
def test_bad_arguments_raise(kwargs, match) -> None:
    image, text = features(4)
    with pytest.raises(ValueError, match=match):
        cwcl_loss(image.float(), text.float(), SCALE, **kwargs)


@pytest.mark.parametrize(
    ("image", "text"),
    [(torch.randn(4, 6), torch.randn(4, 5)), (torch.randn(6), torch.randn(6))],
)
def test_bad_shapes_raise(image, text) -> None:
    with pytest.raises(ValueError, match="`image_features` and `text_features`"):
        cwcl_loss(image, text, SCALE)


@pytest.mark.parametrize("frozen", ["text", "image"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_frozen_features_are_named(frozen, bad) -> None:
    image, text = features(4)
    finite = {"image_features": image, "text_features": text}
    broken = dict(finite)
    broken[f"{frozen}_features"] = finite[f"{frozen}_features"].clone()
    broken[f"{frozen}_features"][2, 0] = bad
    with pytest.raises(ValueError, match=f"^`{frozen}_features` holds non-finite values"):
        cwcl_loss(**broken, logit_scale=SCALE, frozen=frozen)
    # another rank's rows are broken: the gathered argument is named
    gathered = {f"all_{name}": torch.cat([finite[name], broken[name]]) for name in finite}
    with pytest.raises(ValueError, match=f"^`all_{frozen}_features` holds non-finite values"):
        cwcl_loss(**finite, logit_scale=SCALE, frozen=frozen, **gathered)


def test_non_finite_trained_features_raise_naming_them() -> None:
    """The trained side is named once the loss comes out non-finite (was: a NaN loss)."""
    image, text = features(4)
    image = image.clone()
    image[0, 0] = float("nan")
    with pytest.raises(ValueError, match="`image_features` holds non-finite"):
        cwcl_loss(image, text, SCALE)
