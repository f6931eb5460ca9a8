import pytest
import torch
import torch.nn.functional as F

from lightning_plugins.metrics import ImageTextEvaluation, ZeroShotClasses


def normalised(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


CLASSES = ZeroShotClasses([f"class {i}" for i in range(6)], ["a {}"], {"odd": [1, 3, 5]})
EMBEDDINGS = normalised(6, 8, seed=0)


def encode(prompts):
    return torch.stack([EMBEDDINGS[int(p.split()[-1])] for p in prompts])


def reference_recall(images, texts, k):
    """Recall@k by full ranking: the pair's partner among the k most similar."""
    scores = images @ texts.T
    top = scores.topk(k, dim=1).indices
    return (top == torch.arange(len(images))[:, None]).any(1).float().mean()


def test_zero_shot_and_retrieval_against_plain_references():
    evaluation = ImageTextEvaluation(zero_shot_top_k=(1, 2), retrieval_top_k=(1, 3))
    evaluation.start(CLASSES, encode)
    torch.testing.assert_close(evaluation.classifier, EMBEDDINGS)
    images, texts = normalised(10, 8, seed=1), normalised(10, 8, seed=2)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    for part in (slice(0, 4), slice(4, 10)):
        evaluation.update(images[part], labels=labels[part], text_features=texts[part])
    got = evaluation.compute()
    logits = images @ EMBEDDINGS.T
    top1 = logits.argmax(1) == labels
    top2 = (logits.topk(2, dim=1).indices == labels[:, None]).any(1)
    odd = labels % 2 == 1
    expected = {
        "zero_shot_top1": top1.float().mean(),
        "zero_shot_top2": top2.float().mean(),
        "zero_shot_top1_odd": top1[odd].float().mean(),
        "zero_shot_top2_odd": top2[odd].float().mean(),
        "i2t_R@1": reference_recall(images, texts, 1),
        "i2t_R@3": reference_recall(images, texts, 3),
        "t2i_R@1": reference_recall(texts, images, 1),
        "t2i_R@3": reference_recall(texts, images, 3),
    }
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, msg=key)


def test_each_run_starts_afresh():
    evaluation = ImageTextEvaluation(retrieval_top_k=(1,))
    evaluation.start(CLASSES, encode)
    evaluation.update(EMBEDDINGS, labels=torch.arange(6), text_features=EMBEDDINGS)
    assert evaluation.compute()["zero_shot_top1"] == 1.0
    evaluation.start()  # a run without zero-shot classes
    assert evaluation.classifier is None and evaluation.compute() == {}
    texts = EMBEDDINGS.roll(1, dims=0)
    evaluation.update(EMBEDDINGS, text_features=texts)
    assert set(evaluation.compute()) == {"i2t_R@1", "t2i_R@1"}  # only this run's pairs
    torch.testing.assert_close(
        evaluation.compute()["i2t_R@1"], reference_recall(EMBEDDINGS, texts, 1)
    )


def test_padding_repeats_are_dropped_by_index():
    evaluation = ImageTextEvaluation(zero_shot_top_k=(1,), retrieval_top_k=(1,))
    evaluation.start(CLASSES, encode)
    evaluation.update(EMBEDDINGS[:2], labels=torch.tensor([0, 0]), index=torch.tensor([0, 1]))
    evaluation.update(EMBEDDINGS[:1], labels=torch.tensor([0]), index=torch.tensor([0]))
    assert evaluation.compute()["zero_shot_top1"].item() == pytest.approx(0.5)


def test_labels_without_classes_are_an_error():
    evaluation = ImageTextEvaluation()
    evaluation.start()
    with pytest.raises(ValueError, match="has `label` but this evaluation run has no zero-shot"):
        evaluation.update(EMBEDDINGS, labels=torch.arange(6))
    with pytest.raises(ValueError, match="`encode_prompts` is needed"):
        evaluation.start(CLASSES)
