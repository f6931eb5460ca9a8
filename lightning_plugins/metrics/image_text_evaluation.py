"""ImageTextEvaluation: zero-shot accuracy and image-text retrieval over one evaluation run."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from lightning_plugins.functional._checks import check_top_k
from lightning_plugins.functional.zero_shot import zero_shot_classifier
from lightning_plugins.metrics.image_text_retrieval import ImageTextRetrieval
from lightning_plugins.metrics.zero_shot_accuracy import ZeroShotAccuracy
from lightning_plugins.metrics.zero_shot_data import ZeroShotClasses

__all__ = ["ImageTextEvaluation"]


class ImageTextEvaluation(nn.Module):
    """Zero-shot classification and image-text retrieval of an embedding model.

    The evaluation part that modules call (open_clip likewise keeps its zero-shot
    classifier apart from its losses). Per run (a validation or test epoch):
    :meth:`start` embeds the class prompts into the zero-shot classifier (or sets none),
    :meth:`update` adds a batch's normalised image features with its labels (scored
    against the classifier by :class:`ZeroShotAccuracy`) and/or its paired text features
    (ranked by :class:`ImageTextRetrieval`), :meth:`compute` gives ``zero_shot_topK``,
    ``zero_shot_topK_<group>``, ``i2t_R@K`` and ``t2i_R@K`` for what was updated, and
    :meth:`reset` forgets the updates but keeps the classifier (to evaluate the next
    dataloader of the same run on its own). Under
    DDP the metrics gather every rank's samples and drop a distributed sampler's padding
    by the dataset ``index``. A model whose embeddings hold NaN or inf gets NaN for every
    result that scored one, with a warning, never a perfect score (see
    :class:`ZeroShotAccuracy` and :class:`ImageTextRetrieval`).

    Args:
        zero_shot_top_k: the K of zero-shot top-K accuracy (those above the number of
            classes are dropped).
        retrieval_top_k: the K of retrieval Recall@K.
        chunk_size: prompts embedded at once, and retrieval queries ranked at once.

    Raises:
        TypeError: for K values or a ``chunk_size`` that are no integers.
        ValueError: for no K, a K below 1 or a ``chunk_size`` below 1.

    Example:
        >>> evaluation = ImageTextEvaluation(zero_shot_top_k=(1,), retrieval_top_k=(1,))
        >>> encode = lambda prompts: torch.eye(2)[[int(p.endswith("dog")) for p in prompts]]
        >>> evaluation.start(ZeroShotClasses(["cat", "dog"], templates=["a {}"]), encode)
        >>> images = torch.eye(2)
        >>> evaluation.update(images, labels=torch.tensor([0, 0]), text_features=images)
        >>> {k: v.item() for k, v in evaluation.compute().items()}
        {'zero_shot_top1': 0.5, 'i2t_R@1': 1.0, 't2i_R@1': 1.0}
    """

    def __init__(
        self,
        zero_shot_top_k: Sequence[int] = (1, 5),
        retrieval_top_k: Sequence[int] = (1, 5, 10),
        chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        self.zero_shot_top_k = check_top_k(zero_shot_top_k, "zero_shot_top_k")
        self.chunk_size = chunk_size
        self.retrieval = ImageTextRetrieval(top_k=retrieval_top_k, chunk_size=chunk_size)
        # set by `start` for each run: the class embeddings [C, D] and their accuracy
        self.classifier: torch.Tensor | None = None
        self.zero_shot: ZeroShotAccuracy | None = None

    def start(
        self,
        classes: ZeroShotClasses | None = None,
        encode_prompts: Callable[[list[str]], torch.Tensor] | None = None,
    ) -> None:
        """Begin a run: reset the metrics and build the zero-shot classifier.

        Args:
            classes: the zero-shot classes, templates and groups; ``None`` for a run
                without zero-shot classification.
            encode_prompts: maps prompt strings to normalised text embeddings ``[N, D]``;
                needed with ``classes``.
        """
        self.retrieval.reset()
        self.classifier, self.zero_shot = None, None
        if classes is None:
            return
        if encode_prompts is None:
            raise ValueError("`encode_prompts` is needed to embed the zero-shot classes.")
        self.classifier = zero_shot_classifier(
            encode_prompts, classes.class_names, classes.prompt_templates, self.chunk_size
        )
        self.zero_shot = ZeroShotAccuracy(
            len(classes.class_names), top_k=self.zero_shot_top_k, groups=classes.class_groups
        ).to(self.classifier.device)

    def reset(self) -> None:
        """Forget the updates, keep the zero-shot classifier: the next part of the same run.

        Modules evaluate each of several dataloaders on its own this way, embedding the
        class prompts once per run.
        """
        self.retrieval.reset()
        if self.zero_shot is not None:
            self.zero_shot.reset()

    def update(
        self,
        image_features: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> None:
        """Add a batch: normalised image features ``[B, D]``, and labels and/or texts.

        Args:
            image_features: normalised image embeddings.
            labels: class ids ``[B]``, scored zero-shot against the classifier.
            text_features: normalised embeddings ``[B, D]`` of the paired texts, for
                retrieval.
            index: dataset indices ``[B]`` that identify repeated samples.

        Raises:
            ValueError: for ``labels`` when :meth:`start` set no zero-shot classes.
        """
        if labels is not None:
            if self.classifier is None or self.zero_shot is None:
                raise ValueError(
                    "A batch has `label` but this evaluation run has no zero-shot classes: "
                    "give the module zero-shot classes, or a datamodule that provides "
                    "`class_names`, `templates` and `class_groups` (see ZeroShotData)."
                )
            logits = image_features @ self.classifier.to(image_features.dtype).T
            self.zero_shot.update(logits, labels, index)
        if text_features is not None:
            self.retrieval.update(image_features, text_features, index)

    def compute(self) -> dict[str, torch.Tensor]:
        """The results of this run, ``{}`` when nothing was updated."""
        results: dict[str, torch.Tensor] = {}
        if self.zero_shot is not None and self.zero_shot.update_called:
            results.update({f"zero_shot_{k}": v for k, v in self.zero_shot.compute().items()})
        if self.retrieval.update_called:
            results.update(self.retrieval.compute())
        return results
