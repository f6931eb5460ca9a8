"""Lightning callbacks that steer training (EMA teachers, curricula, data mixing)."""

from lightning_plugins.callbacks.concept_plot import plot_concept_frequencies
from lightning_plugins.callbacks.concept_statistics import ConceptStatistics

__all__ = ["ConceptStatistics", "plot_concept_frequencies"]
