"""CLIP's symmetric InfoNCE loss as a module: exact under data parallelism, optionally chunked."""

from __future__ import annotations

import torch

from lightning_plugins.functional import clip_loss
from lightning_plugins.functional._checks import check_bool
from lightning_plugins.functional.contrastive_rows import check_chunk_size
from lightning_plugins.losses._global_batch import GlobalBatch
from lightning_plugins.losses.contrastive_loss import ContrastiveLoss

__all__ = ["ClipLoss"]


class ClipLoss(ContrastiveLoss):
    """Symmetric image-text InfoNCE over the global batch.

    Call signature as open_clip's ``ClipLoss``: L2-normalised features and
    ``logit_scale`` already exponentiated. Under ``torch.distributed`` the features of
    all ranks are gathered and each rank scores its own rows against the whole batch
    (``local_loss=True``) or the whole batch against itself (``local_loss=False``).
    With ``gather_with_grad=True`` (default) gradients flow back to the rank that owns
    each row, and after DDP averages gradients the result is exactly the gradient of the
    loss over the concatenated batch, also when ranks hold batches of different sizes
    (the last step of an epoch). ``gather_with_grad=False`` treats other ranks' rows as
    constants, as open_clip does: cheaper, but the cross-rank terms of the gradient are
    dropped.

    ``chunk_size=k`` scores ``k`` rows at a time in forward and backward (a custom
    autograd function with an exact log-sum-exp per row that recomputes each block in
    backward): extra memory ``O(k * N)`` instead of ``O(N^2)``, same values and
    gradients to float round-off.

    ``logit_bias`` is accepted for a uniform signature and ignored: a constant shift does
    not change a softmax.

    **A drop-in for open_clip's ``ClipLoss``.** The constructor takes open_clip's
    arguments (``local_loss``, ``gather_with_grad``, ``cache_labels``, ``rank``,
    ``world_size``, ``use_horovod``) and the call takes ``output_dict=True``, which
    returns ``{"contrastive_loss": loss}``: swapping the import is all it takes. Note our
    defaults, ``local_loss=True, gather_with_grad=True``, give the exact gradient;
    open_clip's ``False, False`` are accepted and behave as in open_clip.

    Args:
        local_loss: score local rows against the global batch (else every rank scores
            the whole global batch).
        gather_with_grad: let gradients flow through gathered features to their rank.
        cache_labels: accepted for open_clip's signature and ignored (no labels are
            cached: they cost nothing to build).
        rank: accepted for open_clip's signature and ignored: the rank is read from
            ``torch.distributed``. A value given must match it once it is initialized.
        world_size: as ``rank``, for the number of processes.
        use_horovod: must be ``False``: Horovod is not supported (gathers go through
            ``torch.distributed``).
        chunk_size: rows per block, or ``None`` to build the logits at once.
        normalized: the features must be L2-normalised; checked on the first call (one
            host sync), after which the check is skipped. ``False`` accepts any features.

    Raises:
        TypeError: a flag that is no bool, or a ``rank`` / ``world_size`` that is no
            integer.
        ValueError: ``chunk_size`` below 1, ``use_horovod=True``, a negative ``rank``,
            ``world_size`` below 1 or not above ``rank``, or a ``rank`` / ``world_size``
            that contradicts an initialized ``torch.distributed`` at construction (or, if
            it starts later, at the first call); at call time, features of
            unequal shape, unnormalised features (first call, see ``normalized``), a
            global batch of fewer than two pairs, an unknown
            ``reduction``, or non-finite inputs.

    Example:
        >>> import torch.nn.functional as F
        >>> feats = F.normalize(torch.eye(4), dim=-1)
        >>> ClipLoss()(feats, feats, torch.tensor(100.0)) < 1e-3
        tensor(True)
        >>> chunked = ClipLoss(chunk_size=3)(feats, feats.roll(1, 0), torch.tensor(10.0))
        >>> torch.allclose(chunked, ClipLoss()(feats, feats.roll(1, 0), torch.tensor(10.0)))
        True

        open_clip's constructor and call:

        >>> loss = ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=False,
        ...                 rank=0, world_size=1, use_horovod=False)
        >>> loss(feats, feats, torch.tensor(100.0), output_dict=True).keys()
        dict_keys(['contrastive_loss'])
    """

    def __init__(
        self,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        cache_labels: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        use_horovod: bool = False,
        chunk_size: int | None = None,
        normalized: bool = True,
    ) -> None:
        super().__init__(normalized)
        check_chunk_size(chunk_size)
        check_bool(cache_labels, "cache_labels")
        if check_bool(use_horovod, "use_horovod"):
            raise ValueError(
                "`use_horovod`=True is not supported: ClipLoss gathers through "
                "torch.distributed. Launch with torchrun or Lightning's DDP instead."
            )
        self._check_process_group(rank, world_size)
        self.local_loss = check_bool(local_loss, "local_loss")
        self.gather_with_grad = check_bool(gather_with_grad, "gather_with_grad")
        self.chunk_size = chunk_size

    def global_loss(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None,
        batch: GlobalBatch,
        reduction: str,
    ) -> torch.Tensor:
        """Local rows against the global batch, or the whole batch (``local_loss=False``)."""
        all_images = batch.gather(image_features, self.gather_with_grad)
        all_texts = batch.gather(text_features, self.gather_with_grad)
        if batch.world_size == 1 or not self.local_loss:
            every_row = clip_loss(
                all_images, all_texts, logit_scale, reduction="none", chunk_size=self.chunk_size
            )
            rows = every_row[batch.offset : batch.offset + image_features.shape[0]]
            return every_row.mean() if reduction == "mean" else batch.reduce(rows, reduction)
        per_sample = clip_loss(
            image_features,
            text_features,
            logit_scale,
            all_image_features=all_images,
            all_text_features=all_texts,
            label_offset=batch.offset,
            reduction="none",
            chunk_size=self.chunk_size,
        )
        return batch.reduce(per_sample, reduction)
