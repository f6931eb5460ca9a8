"""Samplers and sampling datasets that steer what each batch holds; plain PyTorch, no Lightning."""

from lightning_plugins.sampling.concept_aware_batch_sampler import ConceptAwareBatchSampler
from lightning_plugins.sampling.concept_aware_stream import ConceptAwareStream
from lightning_plugins.sampling.epoch_position import EpochPosition
from lightning_plugins.sampling.shuffle_sampler import ShuffleSampler

__all__ = ["ConceptAwareBatchSampler", "ConceptAwareStream", "EpochPosition", "ShuffleSampler"]
