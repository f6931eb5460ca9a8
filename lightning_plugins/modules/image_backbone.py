"""The feature extractor of an image classifier, from a name, a checkpoint or a module.

:func:`create_backbone` turns what :class:`~lightning_plugins.modules.ImageClassifier`'s
``backbone`` argument names into an ``nn.Module`` returning features ``[B, D]``, and
:func:`feature_size` finds ``D``.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import torch
from torch import nn

from lightning_plugins.functional._checks import load_checkpoint
from lightning_plugins.models import (
    ImageTextTowers,
    SmallConvNet,
    create_image_text_model,
    resolve_path,
)

__all__ = ["BUILT_IN_BACKBONES", "create_backbone", "feature_size"]

#: backbone names built into this package (besides timm's), with their class
BUILT_IN_BACKBONES: dict[str, type[nn.Module]] = {"small_convnet": SmallConvNet}

# head keys of a classification checkpoint that a feature extractor does not have
_HEAD_PREFIXES = ("head.", "fc.", "classifier.", "last_linear.")


def create_backbone(
    backbone: str | nn.Module, backbone_weights: str | None = None, in_channels: int = 3
) -> nn.Module:
    """The feature extractor ``backbone`` names, with weights from ``backbone_weights``.

    Args:
        backbone: one of

            - a built-in name: ``"small_convnet"``
              (:class:`~lightning_plugins.models.SmallConvNet` with ``in_channels``);
            - a timm model name, built with ``pretrained=False, num_classes=0`` (random
              init, nothing downloaded);
            - the path of a Lightning checkpoint (``.ckpt``) of a
              :class:`~lightning_plugins.modules.ContrastiveImageText` (``CLIP``,
              ``SigLIP``): its image tower, with the checkpoint's weights; the features are
              the (unnormalised) image embeddings;
            - an ``nn.Module`` returning features ``[B, D]``, used as it is.
        backbone_weights: a local weights file (a state dict, or a dict holding one under
            ``"state_dict"``) loaded into a built-in or timm backbone; a classifier head in
            it (``head.``, ``fc.``, ``classifier.``) is skipped.
        in_channels: image channels of a built-in or timm backbone.

    Raises:
        TypeError: for a ``backbone`` that is neither a string nor a module.
        ValueError: for an unknown name (naming close matches), a checkpoint that is no
            readable Lightning checkpoint of an image-text module, weights that do not fit,
            or ``backbone_weights`` with a module or checkpoint ``backbone``.

    Example:
        >>> create_backbone("small_convnet")(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 64])
        >>> create_backbone("resnet_18")
        Traceback (most recent call last):
        ...
        ValueError: `backbone`='resnet_18' is neither a built-in backbone (['small_convnet']) ...
    """
    if backbone_weights is not None and not isinstance(backbone_weights, str):
        raise TypeError(
            f"`backbone_weights` must be a file path or None, got {backbone_weights!r} "
            f"({type(backbone_weights).__name__})."
        )
    if isinstance(backbone, nn.Module):
        _no_weights_for(backbone_weights, f"a module ({type(backbone).__name__})")
        return backbone
    if not isinstance(backbone, str):
        raise TypeError(
            "`backbone` must be a timm model name, 'small_convnet', a checkpoint path or an "
            f"nn.Module, got {backbone!r} ({type(backbone).__name__})."
        )
    path = resolve_path(backbone)
    if backbone.endswith(".ckpt") or os.path.isfile(path):
        _no_weights_for(backbone_weights, f"a checkpoint ({backbone!r})")
        return image_tower_from_checkpoint(path)
    if backbone in BUILT_IN_BACKBONES:
        model = BUILT_IN_BACKBONES[backbone](in_channels=in_channels)
    else:
        model = _timm_backbone(backbone, in_channels)
    if backbone_weights is not None:
        _load_weights(model, resolve_path(backbone_weights), backbone)
    return model


def feature_size(backbone: nn.Module, image_size: int, in_channels: int = 3) -> int:
    """The size ``D`` of the features ``[B, D]`` that ``backbone`` returns.

    Its integer ``num_features``, ``output_dim`` or ``embed_dim`` attribute, else one
    forward pass of two blank images ``[2, in_channels, image_size, image_size]`` in eval
    mode without gradients (the training mode is restored after).

    Raises:
        ValueError: when the probe's output is not ``[2, D]``.

    Example:
        >>> feature_size(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)), image_size=4)
        5
    """
    for name in ("num_features", "output_dim", "embed_dim"):
        value = getattr(backbone, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    training = backbone.training
    parameter = next(backbone.parameters(), None)
    device = parameter.device if parameter is not None else None
    probe = torch.zeros(2, in_channels, image_size, image_size, device=device)
    try:
        with torch.no_grad():
            features = backbone.eval()(probe)
    finally:
        backbone.train(training)
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != 2:
        got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
        raise ValueError(
            f"`backbone` must return features [B, D]; on images [2, {in_channels}, "
            f"{image_size}, {image_size}] (set `image_size`) it returned {got}. Give it a "
            "`num_features` attribute, or pool its output to [B, D]."
        )
    return int(features.shape[1])


def image_tower_from_checkpoint(ckpt_path: str) -> nn.Module:
    """The image tower of a Lightning checkpoint of a ContrastiveImageText (CLIP, SigLIP).

    The tower is rebuilt from the checkpoint's hyperparameters (``model_name`` or
    ``towers``, without downloading or reading their original weight files) and gets the
    checkpoint's ``model.visual.*`` weights. Read with ``torch.load(weights_only=True)``.

    Raises:
        ValueError: for a file that is no readable Lightning checkpoint, or one that holds
            no image-text module (no ``model_name``/``towers`` hyperparameters or no
            ``model.visual.*`` weights).
    """
    checkpoint = load_checkpoint(ckpt_path, "backbone")
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    prefix = "model.visual."
    visual = {k[len(prefix) :]: v for k, v in (state or {}).items() if k.startswith(prefix)}
    towers = (hparams or {}).get("towers")
    model_name = (hparams or {}).get("model_name")
    if not visual or (towers is None and model_name is None):
        raise ValueError(
            f"`backbone`={ckpt_path!r} is no Lightning checkpoint of a ContrastiveImageText "
            "(CLIP, SigLIP): it lacks the 'model_name'/'towers' hyperparameters or "
            "'model.visual.*' weights. For a plain weights file of a timm model, pass the "
            "model name as `backbone` and the file as `backbone_weights`."
        )
    if towers is not None:  # no original weight files: the checkpoint's weights follow
        spec = {**towers, "pretrained": None, "image_tower_weights": None}
        spec["text_tower_pretrained"] = False
        built = ImageTextTowers(**spec)
    else:
        built = ImageTextTowers(model_name=model_name)
    tower = create_image_text_model(built, init_logit_scale=0.0).visual
    tower.load_state_dict(visual)
    return tower


def _no_weights_for(backbone_weights: str | None, what: str) -> None:
    if backbone_weights is not None:
        raise ValueError(
            f"`backbone_weights`={backbone_weights!r} is for a backbone built by name (timm or "
            f"'small_convnet'); `backbone` is {what}, which brings its own weights."
        )


def _timm_backbone(name: str, in_channels: int) -> nn.Module:
    import timm

    if not timm.is_model(name):
        names = [*BUILT_IN_BACKBONES, *timm.list_models()]
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        hint = f" Close matches: {close}." if close else ""
        raise ValueError(
            f"`backbone`={name!r} is neither a built-in backbone ({sorted(BUILT_IN_BACKBONES)}) "
            f"nor a timm model name, nor an existing checkpoint file.{hint} See "
            "timm.list_models() for timm's names."
        )
    return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)


def _load_weights(model: nn.Module, path: str, backbone: str) -> None:
    state: Any = load_checkpoint(path, "backbone_weights")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"`backbone_weights`={path!r} holds no state dict of tensors.")
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.startswith(_HEAD_PREFIXES)]
    if missing or unexpected:
        raise ValueError(
            f"`backbone_weights`={path!r} does not fit `backbone`={backbone!r}: missing "
            f"{missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})."
        )
