"""SigLIP's pairwise sigmoid loss as a module: exact under data parallelism, optionally chunked."""

from __future__ import annotations

import torch

from lightning_plugins.distributed import neighbour_exchange
from lightning_plugins.functional import siglip_loss
from lightning_plugins.functional._checks import check_bool, check_choice
from lightning_plugins.functional.contrastive_rows import check_chunk_size, sigmoid_row_loss
from lightning_plugins.losses._global_batch import GlobalBatch
from lightning_plugins.losses.contrastive_loss import ContrastiveLoss

__all__ = ["SigLipLoss"]

_DIST_IMPLS = ("ring", "gather")
# open_clip's names of its implementations, and ours that give the same loss
_OPEN_CLIP_DIST_IMPLS = {None: "ring", "bidir": "ring", "shift": "ring", "reduce": "gather"}


class SigLipLoss(ContrastiveLoss):
    """Pairwise sigmoid loss over the global batch.

    Call signature as open_clip's ``SigLipLoss``. Each rank scores its local images
    against every text of the global batch; the sum over pairs is divided by the number
    of images, and after DDP averages gradients the result is exactly the loss (and
    gradient) of the concatenated batch, also when ranks hold batches of different sizes.

    How texts reach other ranks (``dist_impl``):

    - ``"ring"`` (default): text features travel between neighbouring ranks in both
      directions (batched ``isend``/``irecv``), ``ceil((W - 1) / 2)`` rounds, images stay
      local; in backward each block's gradient returns to the rank that owns it. Only
      one other rank's texts are in memory at a time.
    - ``"gather"``: all-gather with gradient, then one ``[B, N]`` block.

    ``chunk_size=k`` scores ``k`` image rows at a time in forward and backward, recomputing
    each block in backward: extra memory ``O(k * N)``, same values and gradients.

    **A drop-in for open_clip's ``SigLipLoss``.** The constructor takes open_clip's
    arguments (``cache_labels``, ``rank``, ``world_size``, ``dist_impl``, also
    open_clip's ``dist_impl`` names) and the call takes ``output_dict=True``, which
    returns ``{"contrastive_loss": loss}``: swapping the import is all it takes.

    Args:
        cache_labels: accepted for open_clip's signature and ignored (no labels are
            cached).
        rank: accepted for open_clip's signature and ignored: the rank is read from
            ``torch.distributed``. A value given must match it once it is initialized.
        world_size: as ``rank``, for the number of processes.
        dist_impl: ``"ring"`` or ``"gather"``; open_clip's names are accepted for the
            same loss: ``None``, ``"bidir"`` and ``"shift"`` run ``"ring"``,
            ``"reduce"`` runs ``"gather"``.
        chunk_size: image rows per block, or ``None`` to build each block at once.
        normalized: the features must be L2-normalised; checked on the first call (one
            host sync), after which the check is skipped. ``False`` accepts any features.

    Raises:
        TypeError: a ``cache_labels`` that is no bool, or a ``rank`` / ``world_size`` that
            is no integer.
        ValueError: ``chunk_size`` below 1, an unknown ``dist_impl``, a negative ``rank``,
            ``world_size`` below 1 or not above ``rank``, or a ``rank`` / ``world_size``
            that contradicts an initialized ``torch.distributed`` at construction (or, if
            it starts later, at the first call);
            at call time, features of unequal shape, unnormalised features (first call,
            see ``normalized``), a global batch of fewer than two
            pairs, an unknown ``reduction``, or non-finite inputs.

    Example:
        >>> loss = SigLipLoss()
        >>> feats = torch.eye(3)
        >>> round(loss(feats, feats, torch.tensor(10.0), torch.tensor(-5.0)).item(), 4)
        0.0201
        >>> chunked = SigLipLoss(chunk_size=2)(feats, feats, torch.tensor(10.0), torch.tensor(-5.0))
        >>> round(chunked.item(), 4)
        0.0201

        open_clip's constructor and call:

        >>> loss = SigLipLoss(cache_labels=False, rank=0, world_size=1, dist_impl=None)
        >>> loss.dist_impl
        'ring'
        >>> loss(feats, feats, torch.tensor(10.0), torch.tensor(-5.0), output_dict=True)
        {'contrastive_loss': tensor(0.0201)}
    """

    def __init__(
        self,
        cache_labels: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        dist_impl: str | None = "ring",
        chunk_size: int | None = None,
        normalized: bool = True,
    ) -> None:
        super().__init__(normalized)
        check_chunk_size(chunk_size)
        check_bool(cache_labels, "cache_labels")
        if isinstance(dist_impl, str | None) and dist_impl in _OPEN_CLIP_DIST_IMPLS:
            dist_impl = _OPEN_CLIP_DIST_IMPLS[dist_impl]
        check_choice(dist_impl, "dist_impl", _DIST_IMPLS)
        self._check_process_group(rank, world_size)
        self.chunk_size = chunk_size
        self.dist_impl = dist_impl

    def global_loss(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None,
        batch: GlobalBatch,
        reduction: str,
    ) -> torch.Tensor:
        """Local images against every text of the global batch."""
        if batch.world_size > 1 and self.dist_impl == "ring":
            per_sample = self._ring(image_features, text_features, logit_scale, logit_bias, batch)
        else:
            per_sample = siglip_loss(
                image_features,
                text_features,
                logit_scale,
                logit_bias,
                all_text_features=batch.gather(text_features),
                label_offset=batch.offset,
                reduction="none",
                chunk_size=self.chunk_size,
            )
        return batch.reduce(per_sample, reduction)

    def _ring(
        self,
        images: torch.Tensor,
        texts: torch.Tensor,
        scale: torch.Tensor | float,
        bias: torch.Tensor | float | None,
        batch: GlobalBatch,
    ) -> torch.Tensor:
        """Local block with positives, then every other rank's texts as negatives."""
        world, rank, sizes = batch.world_size, batch.rank, batch.sizes
        left, right = (rank - 1) % world, (rank + 1) % world

        def negatives(block: torch.Tensor) -> torch.Tensor:
            return sigmoid_row_loss(images, block, scale, bias, None, self.chunk_size)

        def shape(origin: int) -> torch.Size:
            return torch.Size((sizes[origin % world], texts.shape[1]))

        per_sample = sigmoid_row_loss(images, texts, scale, bias, 0, self.chunk_size)
        to_left = to_right = texts
        rounds, remainder = divmod(world - 1, 2)
        for step in range(1, rounds + 1):
            # the block from the left started at rank - step, the one from the right at rank + step
            from_left, from_right = neighbour_exchange(
                (to_left, to_right), (left, right), (left, right),
                (shape(rank - step), shape(rank + step)),
            )  # fmt: skip
            per_sample = per_sample + negatives(from_left) + negatives(from_right)
            to_left, to_right = from_right, from_left
        if remainder:
            (from_left,) = neighbour_exchange(
                (to_right,), (right,), (left,), (shape(rank - rounds - 1),)
            )
            per_sample = per_sample + negatives(from_left)
        return per_sample
