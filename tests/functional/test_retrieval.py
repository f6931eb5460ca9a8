"""retrieval_recall against a naive full-matrix reference."""

from __future__ import annotations

import pytest
import torch

from lightning_plugins.functional import retrieval_recall


def reference_recall(images, texts, top_k):
    """Full N x N similarities; rank = other candidates scoring >= the positive."""
    sim = (images.double() @ texts.double().T).tolist()

    def one_way(rows):
        n = len(rows)
        ranks = [sum(1 for j in range(n) if j != i and rows[i][j] >= rows[i][i]) for i in range(n)]
        return torch.tensor([sum(r < k for r in ranks) / n for k in top_k], dtype=torch.float64)

    transposed = [list(col) for col in zip(*sim, strict=True)]
    return one_way(sim), one_way(transposed)


def integer_features(n, dim, seed, duplicates=0):
    """Small-integer features: exact dot products, so ties are exact and frequent."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(-2, 3, (n, dim), generator=g).float()
    texts = images + torch.randint(-1, 2, (n, dim), generator=g).float()
    if duplicates:  # copy some pairs onto others: identical candidates tie
        src = torch.randint(0, n, (duplicates,), generator=g)
        dst = torch.randint(0, n, (duplicates,), generator=g)
        images[dst], texts[dst] = images[src], texts[src]
    return images, texts


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 16, 37, 1000])
@pytest.mark.parametrize("duplicates", [0, 8])
def test_matches_reference_integer_features(chunk_size, duplicates):
    top_k = (1, 2, 5, 10)
    images, texts = integer_features(37, 4, seed=chunk_size + duplicates, duplicates=duplicates)
    i2t, t2i = retrieval_recall(images, texts, top_k, chunk_size=chunk_size)
    ref_i2t, ref_t2i = reference_recall(images, texts, top_k)
    torch.testing.assert_close(i2t.double(), ref_i2t)
    torch.testing.assert_close(t2i.double(), ref_t2i)


@pytest.mark.parametrize("chunk_size", [1, 5, 29, 64])
def test_matches_reference_random_normalised(chunk_size):
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(29, 8, generator=g, dtype=torch.float64))
    texts = torch.nn.functional.normalize(images + 0.8 * torch.randn(29, 8, generator=g).double())
    top_k = (1, 3, 5)
    i2t, t2i = retrieval_recall(images, texts, top_k, chunk_size=chunk_size)
    ref_i2t, ref_t2i = reference_recall(images, texts, top_k)
    torch.testing.assert_close(i2t, ref_i2t)
    torch.testing.assert_close(t2i, ref_t2i)
    # the two directions differ here, so a swapped return order would be caught
    assert not torch.equal(ref_i2t, ref_t2i)


def test_chunk_size_does_not_change_result():
    images, texts = integer_features(50, 3, seed=1, duplicates=10)
    results = [retrieval_recall(images, texts, (1, 5), chunk_size=c) for c in (1, 7, 50, 51)]
    for i2t, t2i in results[1:]:
        assert torch.equal(i2t, results[0][0]) and torch.equal(t2i, results[0][1])


def test_collapsed_embeddings_score_zero_until_k_reaches_n():
    feats = torch.ones(6, 3)
    i2t, t2i = retrieval_recall(feats, feats, top_k=(1, 5, 6), chunk_size=4)
    assert i2t.tolist() == [0.0, 0.0, 1.0]
    assert t2i.tolist() == [0.0, 0.0, 1.0]


def test_handmade_ranks():
    # image 0 matches text 0 best; image 1 prefers text 0 (rank 1); image 2 ties with text 0
    images = torch.tensor([[1.0, 0.0], [1.0, 0.5], [1.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # sims i2t: row0 [1,0,0] rank0; row1 [1,.5,.5] rank of .5: others >= .5 -> 2
    # row2 [1,1,1] -> rank 2
    i2t, _ = retrieval_recall(images, texts, top_k=(1, 2, 3))
    torch.testing.assert_close(i2t, torch.tensor([1 / 3, 1 / 3, 1.0]))


def test_output_dtype_follows_input():
    feats = torch.eye(3)
    i2t, t2i = retrieval_recall(feats, feats, top_k=(1,))
    assert i2t.dtype == t2i.dtype == torch.float32
    assert i2t.shape == (1,)


@pytest.mark.parametrize(
    ("images", "texts", "kwargs", "match"),
    [
        (torch.zeros(3, 2), torch.zeros(4, 2), {}, "image_features"),
        (torch.zeros(3), torch.zeros(3), {}, "image_features"),
        (torch.zeros(3, 2), torch.zeros(3, 2), {"top_k": ()}, "top_k"),
        (torch.zeros(3, 2), torch.zeros(3, 2), {"top_k": (0, 1)}, "top_k"),
        (torch.zeros(3, 2), torch.zeros(3, 2), {"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_arguments_raise(images, texts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        retrieval_recall(images, texts, **kwargs)
