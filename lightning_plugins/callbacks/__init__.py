"""Lightning callbacks that steer training (EMA teachers, curricula, data mixing)."""

from lightning_plugins.callbacks.concept_plot import plot_concept_frequencies
from lightning_plugins.callbacks.concept_statistics import ConceptStatistics
from lightning_plugins.callbacks.curriculum import Curriculum
from lightning_plugins.callbacks.data_diet import DataDiet
from lightning_plugins.callbacks.ema_teacher import EMATeacher
from lightning_plugins.callbacks.gradient_alignment_mixing import GradientAlignmentMixing
from lightning_plugins.callbacks.held_out import MixtureData
from lightning_plugins.callbacks.lines import LiNeS
from lightning_plugins.callbacks.mixture_weights_plot import plot_mixture_weights
from lightning_plugins.callbacks.online_mixing import OnlineMixing
from lightning_plugins.callbacks.sample_protocols import ClassificationLogits, PerSampleLoss
from lightning_plugins.callbacks.score_histogram import plot_score_histogram
from lightning_plugins.callbacks.skill_it import SkillIt
from lightning_plugins.callbacks.skills_graph import estimate_skills_graph
from lightning_plugins.callbacks.task_boundaries import TaskBoundaries
from lightning_plugins.callbacks.teacher_view import TeacherView
from lightning_plugins.callbacks.teacher_weights import (
    export_teacher,
    load_teacher_weights,
    teacher_names,
)

__all__ = [
    "ClassificationLogits",
    "ConceptStatistics",
    "Curriculum",
    "DataDiet",
    "EMATeacher",
    "GradientAlignmentMixing",
    "LiNeS",
    "MixtureData",
    "OnlineMixing",
    "PerSampleLoss",
    "SkillIt",
    "TaskBoundaries",
    "TeacherView",
    "estimate_skills_graph",
    "export_teacher",
    "load_teacher_weights",
    "plot_concept_frequencies",
    "plot_mixture_weights",
    "plot_score_histogram",
    "teacher_names",
]
