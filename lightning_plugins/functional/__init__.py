"""Pure functions on tensors: every formula of the library, once."""

from lightning_plugins.functional.cabs_select import cabs_select
from lightning_plugins.functional.class_statistics import (
    COVARIANCE_KINDS,
    class_moments,
    class_statistics,
    normalized_logits,
    sample_class_features,
    shrink_old_means,
    statistics_from_moments,
)
from lightning_plugins.functional.clip_loss import clip_loss
from lightning_plugins.functional.concept_statistics import (
    concept_batch_statistics,
    concept_counts,
    concept_histogram,
    concept_histogram_statistics,
)
from lightning_plugins.functional.continual_metrics import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
)
from lightning_plugins.functional.contrastive_rows import sigmoid_row_loss, softmax_row_loss
from lightning_plugins.functional.cwcl_loss import cwcl_loss
from lightning_plugins.functional.deduplicate import first_occurrence
from lightning_plugins.functional.difficulty import (
    difficulty_ranking,
    ease_from_difficulty,
    ease_weights,
    prune_mask,
)
from lightning_plugins.functional.distillation import (
    distillation_rows,
    image_text_distillation,
    sigmoid_kl_rows,
    soft_cross_entropy,
)
from lightning_plugins.functional.ema import ema_update_
from lightning_plugins.functional.lines import (
    lines_factors,
    lines_scale,
    merging_alpha,
    scale_update_,
)
from lightning_plugins.functional.mixing import (
    check_mixture_weights,
    dga_weights,
    skill_it_weights,
)
from lightning_plugins.functional.pacing import (
    PACINGS,
    check_pacing_value,
    geometric_pacing,
    linear_pacing,
    resolve_pacing,
    root_pacing,
    step_pacing,
)
from lightning_plugins.functional.random_streams import keyed_generator
from lightning_plugins.functional.rank_gates import proximal_strength, soft_threshold_
from lightning_plugins.functional.retrieval import retrieval_recall
from lightning_plugins.functional.sample_scores import (
    check_scores,
    el2n_scores,
    forgetting_events,
    grand_scores,
    per_sample_grad_norms,
)
from lightning_plugins.functional.schedules import (
    constant_schedule,
    cosine_schedule,
    resolve_schedule,
    warmup_decay_schedule,
)
from lightning_plugins.functional.siglip_loss import siglip_loss
from lightning_plugins.functional.topk_correct import topk_correct
from lightning_plugins.functional.zero_shot import average_templates, zero_shot_classifier

__all__ = [
    "COVARIANCE_KINDS",
    "PACINGS",
    "average_accuracy",
    "average_incremental_accuracy",
    "average_templates",
    "backward_transfer",
    "cabs_select",
    "check_mixture_weights",
    "check_pacing_value",
    "check_scores",
    "class_moments",
    "class_statistics",
    "clip_loss",
    "concept_batch_statistics",
    "concept_counts",
    "concept_histogram",
    "concept_histogram_statistics",
    "constant_schedule",
    "cosine_schedule",
    "cwcl_loss",
    "dga_weights",
    "difficulty_ranking",
    "distillation_rows",
    "ease_from_difficulty",
    "ease_weights",
    "el2n_scores",
    "ema_update_",
    "first_occurrence",
    "forgetting",
    "forgetting_events",
    "forward_transfer",
    "geometric_pacing",
    "grand_scores",
    "image_text_distillation",
    "keyed_generator",
    "linear_pacing",
    "lines_factors",
    "lines_scale",
    "merging_alpha",
    "normalized_logits",
    "per_sample_grad_norms",
    "proximal_strength",
    "prune_mask",
    "resolve_pacing",
    "resolve_schedule",
    "retrieval_recall",
    "root_pacing",
    "sample_class_features",
    "scale_update_",
    "shrink_old_means",
    "siglip_loss",
    "sigmoid_kl_rows",
    "sigmoid_row_loss",
    "skill_it_weights",
    "soft_cross_entropy",
    "soft_threshold_",
    "softmax_row_loss",
    "statistics_from_moments",
    "step_pacing",
    "topk_correct",
    "warmup_decay_schedule",
    "zero_shot_classifier",
]
