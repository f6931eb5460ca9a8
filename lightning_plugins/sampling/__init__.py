"""Samplers and sampling datasets that steer what each batch holds; plain PyTorch, no Lightning."""

from lightning_plugins.sampling.concept_aware_batch_sampler import ConceptAwareBatchSampler
from lightning_plugins.sampling.concept_aware_stream import ConceptAwareStream
from lightning_plugins.sampling.curriculum_sampler import CurriculumSampler
from lightning_plugins.sampling.epoch_position import EpochPosition
from lightning_plugins.sampling.mixture_sampler import MixtureSampler, find_mixture_sampler
from lightning_plugins.sampling.replica_world import ReplicaWorld
from lightning_plugins.sampling.shuffle_sampler import ShuffleSampler
from lightning_plugins.sampling.steerable import SteerableSampler, find_steerable_sampler
from lightning_plugins.sampling.steered_position import SteeredPosition
from lightning_plugins.sampling.steering import Steering

__all__ = [
    "ConceptAwareBatchSampler",
    "ConceptAwareStream",
    "CurriculumSampler",
    "EpochPosition",
    "MixtureSampler",
    "ReplicaWorld",
    "ShuffleSampler",
    "SteerableSampler",
    "SteeredPosition",
    "Steering",
    "find_mixture_sampler",
    "find_steerable_sampler",
]
