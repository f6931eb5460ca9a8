"""Steerable samplers for map-style datasets; plain PyTorch, no Lightning."""

__all__: list[str] = []
