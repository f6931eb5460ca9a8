"""Samplers for map-style datasets; plain PyTorch, no Lightning."""

from lightning_plugins.sampling.shuffle_sampler import ShuffleSampler

__all__ = ["ShuffleSampler"]
