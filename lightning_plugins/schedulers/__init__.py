"""Learning-rate schedulers (``torch.optim.lr_scheduler.LRScheduler`` subclasses)."""

from lightning_plugins.schedulers.warmup_cosine import WarmupCosineLR

__all__ = ["WarmupCosineLR"]
