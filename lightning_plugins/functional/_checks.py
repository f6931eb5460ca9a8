"""Argument checks shared by the whole package (private): every check is written once here.

A value of the wrong type raises ``TypeError``, a value of the right type outside what is
allowed raises ``ValueError``; both name the argument, the value given and what is allowed.
The scalar checks return the value converted to the plain Python type (``numpy.int64`` →
``int``), so what is stored is a primitive.
"""

from __future__ import annotations

import math
import numbers
import os
import pickle
from collections.abc import Collection, Sized
from typing import Any

import torch

_REDUCTIONS = ("mean", "sum", "none")


def _type_name(value: Any) -> str:
    return type(value).__name__


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left = "-inf" if low is None else f"{low:g}"
    right = "inf" if high is None else f"{high:g}"
    opening = "(" if low_open or low is None else "["
    closing = ")" if high_open or high is None else "]"
    return f"{opening}{left}, {right}{closing}"


def check_int(
    value: Any,
    name: str,
    *,
    low: int | None = None,
    high: int | None = None,
    optional: bool = False,
) -> int | None:
    """Return ``value`` as an ``int`` if it is an integer in ``[low, high]``.

    ``bool`` is no integer here; numpy and torch integer scalars are. ``None`` passes when
    ``optional``.

    Example:
        >>> check_int(3, "batch_size", low=1)
        3
        >>> check_int(1.5, "batch_size", low=1)
        Traceback (most recent call last):
        ...
        TypeError: `batch_size` must be an integer, got 1.5 (float).
        >>> check_int(0, "batch_size", low=1)
        Traceback (most recent call last):
        ...
        ValueError: `batch_size` must be a positive integer, got 0.
    """
    if value is None and optional:
        return None
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        allowed = "an integer or None" if optional else "an integer"
        raise TypeError(f"`{name}` must be {allowed}, got {value!r} ({_type_name(value)}).")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None and low in (0, 1):
            allowed = "a non-negative integer" if low == 0 else "a positive integer"
        elif high is None:
            allowed = f"an integer of at least {low}"
        elif low is None:
            allowed = f"an integer of at most {high}"
        else:
            allowed = f"an integer in [{low}, {high}]"
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")
    return value


def check_float(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> float | None:
    """Return ``value`` as a finite ``float`` in the interval from ``low`` to ``high``.

    The bounds are inclusive unless ``low_open`` / ``high_open``. Integers are accepted
    (``1`` for ``1.0``), ``bool`` and strings are not; NaN and infinities never pass.

    Example:
        >>> check_float(0.5, "decay", low=0, high=1, high_open=True)
        0.5
        >>> check_float(1, "decay", low=0, high=1, high_open=True)
        Traceback (most recent call last):
        ...
        ValueError: `decay` must be a finite number in [0, 1), got 1.
        >>> check_float("0.5", "decay")
        Traceback (most recent call last):
        ...
        TypeError: `decay` must be a number, got '0.5' (str).
    """
    if value is None and optional:
        return None
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        allowed = "a number or None" if optional else "a number"
        raise TypeError(f"`{name}` must be {allowed}, got {value!r} ({_type_name(value)}).")
    number = float(value)
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or below or above:
        raise ValueError(
            f"`{name}` must be a finite number in "
            f"{_interval(low, high, low_open, high_open)}, got {value!r}."
        )
    return number


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` if it is a ``bool`` (numpy's too); strings such as ``"false"`` are not.

    Example:
        >>> check_bool(True, "lock_image")
        True
        >>> check_bool("false", "lock_image")
        Traceback (most recent call last):
        ...
        TypeError: `lock_image` must be a bool (True or False), got 'false' (str).
    """
    if type(value).__name__ == "bool_":  # numpy.bool_
        value = bool(value)
    if not isinstance(value, bool):
        raise TypeError(
            f"`{name}` must be a bool (True or False), got {value!r} ({_type_name(value)})."
        )
    return value


def check_choice(value: Any, name: str, choices: Collection[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``.

    Example:
        >>> check_choice("ema", "validate_with", ("ema", "model", "both"))
        'ema'
        >>> check_choice("EMA", "validate_with", ("ema", "model", "both"))
        Traceback (most recent call last):
        ...
        ValueError: `validate_with` must be one of ('ema', 'model', 'both'), got 'EMA'.
    """
    try:
        known = value in choices
    except TypeError:  # unhashable value against a set
        known = False
    if not known:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")
    return value


def check_length(value: Sized, name: str, length: int, what: str) -> None:
    """Raise ``ValueError`` unless ``value`` holds ``length`` entries, one per ``what``.

    Example:
        >>> check_length([0.1, 0.2], "targets", 3, "concept")
        Traceback (most recent call last):
        ...
        ValueError: `targets` must hold one entry per concept (3), got 2.
    """
    if len(value) != length:
        raise ValueError(f"`{name}` must hold one entry per {what} ({length}), got {len(value)}.")


def check_reduction(reduction: str) -> None:
    """Raise ``ValueError`` unless ``reduction`` is one of ``mean``, ``sum``, ``none``."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}.")


def check_feature_pair(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    """Raise ``ValueError`` unless both features are 2-D with equal shape."""
    if image_features.ndim != 2 or text_features.ndim != 2:
        raise ValueError(
            "`image_features` and `text_features` must be 2-D [batch, dim], got shapes "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}."
        )
    if image_features.shape != text_features.shape:
        raise ValueError(
            "`image_features` and `text_features` must have equal shapes (one caption per "
            f"image, one embedding size), got {tuple(image_features.shape)} and "
            f"{tuple(text_features.shape)}."
        )


def check_global_features(
    image_features: torch.Tensor,
    label_offset: int,
    *,
    positives: bool = True,
    **global_features: torch.Tensor,
) -> None:
    """Raise ``ValueError`` unless the global features fit the local ``[B, D]`` rows.

    Every global tensor must be ``[N, D]`` with the local ``D`` and the same ``N``, and
    (when the global rows hold the local rows' ``positives``) ``label_offset`` must place
    the ``B`` local rows inside the ``N`` global ones.
    """
    batch, dim = image_features.shape
    num_rows = batch
    for position, (name, rows) in enumerate(global_features.items()):
        if rows.ndim != 2 or rows.shape[1] != dim:
            raise ValueError(
                f"`{name}` must be [N, {dim}] (the local embedding size), got shape "
                f"{tuple(rows.shape)}."
            )
        if position > 0 and rows.shape[0] != num_rows:
            names = " and ".join(f"`{key}`" for key in global_features)
            raise ValueError(
                f"{names} must hold the same number of rows (pass both or neither), got "
                f"{[tuple(t.shape) for t in global_features.values()]}."
            )
        num_rows = rows.shape[0]
    if positives and not 0 <= label_offset <= num_rows - batch:
        raise ValueError(
            f"`label_offset` must place the {batch} local rows inside the {num_rows} global "
            f"rows, i.e. lie in [0, {num_rows - batch}], got {label_offset}."
        )


def check_unit_norm(tolerance: float = 2e-2, **features: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the first feature tensor whose rows are not unit length.

    The tolerance admits half-precision round-off of normalised features.
    """
    for name, tensor in features.items():
        norms = tensor.detach().float().norm(dim=-1)
        norms = norms[torch.isfinite(norms)]  # non-finite rows get their own error later
        worst = float((norms - 1).abs().max()) if norms.numel() else 0.0
        if worst > tolerance:
            raise ValueError(
                f"`{name}` must be L2-normalised (rows of norm 1), but a row's norm differs "
                f"from 1 by {worst:.3g}. Normalise with torch.nn.functional.normalize(x, "
                "dim=-1), or pass `normalized=False` to the loss to skip this check."
            )


def explain_non_finite(what: str, **tensors: torch.Tensor | float | None) -> None:
    """Raise ``ValueError`` for a non-finite ``what``, naming the input that caused it.

    Called once a result turned out non-finite, so the common finite path costs nothing
    beyond one check of the result.
    """
    for name, tensor in tensors.items():
        if tensor is not None and not bool(torch.isfinite(torch.as_tensor(tensor)).all()):
            raise ValueError(
                f"`{name}` holds non-finite values (NaN or inf), so the {what} is undefined. "
                "Check the towers' outputs and the learning rate."
            )
    raise ValueError(f"The {what} is non-finite although its inputs are finite.")


def apply_reduction(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce a ``[B]`` per-sample loss by ``mean``, ``sum`` or ``none``."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def check_top_k(top_k: Any, name: str = "top_k") -> tuple[int, ...]:
    """Return ``top_k`` as a non-empty tuple of integers of at least 1.

    Example:
        >>> check_top_k([1, 5])
        (1, 5)
        >>> check_top_k(())
        Traceback (most recent call last):
        ...
        ValueError: `top_k` must hold at least one K, got ().
    """
    if isinstance(top_k, str | bytes) or not isinstance(top_k, Collection):
        raise TypeError(
            f"`{name}` must be a sequence of integers, got {top_k!r} ({_type_name(top_k)})."
        )
    if len(top_k) == 0:
        raise ValueError(f"`{name}` must hold at least one K, got {tuple(top_k)}.")
    return tuple(check_int(k, f"{name}[{i}]", low=1) for i, k in enumerate(top_k))


def check_resume_state(
    state: Any,
    what: str,
    config: dict[str, Any],
    required: Collection[str],
    advice: str | None = None,
) -> None:
    """Check that a saved ``state`` fits the sampler / dataset ``what`` configured as ``config``.

    ``state`` must be a dict holding the keys ``required``; its ``"config"`` (primitives
    saved by ``state_dict``) must equal ``config`` field by field. A state saved without a
    ``"config"`` (older checkpoints) is not compared. Raises ``ValueError`` naming every
    differing field with the saved and the current value, followed by ``advice`` (by
    default: resume with the same settings or start the epoch afresh).

    Example:
        >>> check_resume_state({"config": {"size": 8}, "yielded": 3}, "ShuffleSampler",
        ...                    {"size": 8}, ["yielded"])
        >>> check_resume_state({"config": {"size": 8}, "yielded": 3}, "ShuffleSampler",
        ...                    {"size": 9}, ["yielded"])
        Traceback (most recent call last):
        ...
        ValueError: Cannot resume ShuffleSampler from this state: it was saved with size=8, but this one has size=9. Resume with the same settings, or start the epoch afresh without this state (do not load it; with Lightning, start a new fit from the checkpoint's weights).
    """  # noqa: E501
    advice = advice or (
        "Resume with the same settings, or start the epoch afresh without this state (do "
        "not load it; with Lightning, start a new fit from the checkpoint's weights)."
    )
    if not isinstance(state, dict):
        raise ValueError(
            f"Cannot resume {what} from the state {state!r} ({_type_name(state)}): the "
            f"checkpoint's loader held no {what} state, so it was saved with another sampler "
            f"or dataset (e.g. another `sampling`). {advice}"
        )
    missing = [key for key in required if key not in state]
    saved = state.get("config")
    if missing or (
        saved is not None and saved.get("kind", config.get("kind")) != config.get("kind")
    ):
        kind = "" if not isinstance(saved, dict) else f" (saved by {saved.get('kind')!r})"
        raise ValueError(
            f"Cannot resume {what} from a state with keys {sorted(map(str, state))}{kind}; it "
            f"needs {sorted(required)}: the checkpoint was saved with another sampler or "
            f"dataset (e.g. another `sampling`). {advice}"
        )
    if saved is None:
        return
    differing = [key for key in config if key in saved and saved[key] != config[key]]
    if differing:
        before = ", ".join(f"{key}={saved[key]!r}" for key in differing)
        now = ", ".join(f"{key}={config[key]!r}" for key in differing)
        raise ValueError(
            f"Cannot resume {what} from this state: it was saved with {before}, but this one "
            f"has {now}. {advice}"
        )


def check_template_fields(templates: Any, name: str = "templates") -> None:
    """Raise ``ValueError`` unless each template has exactly one empty ``{}`` field.

    ``"a {} and a {}"`` or ``"a {name}"`` would fail inside ``str.format`` with an
    ``IndexError`` / ``KeyError`` that names no template.

    Example:
        >>> check_template_fields(["a photo of a {}."])
        >>> check_template_fields(["a {} by a {}."])
        Traceback (most recent call last):
        ...
        ValueError: `templates` entry 'a {} by a {}.' must hold exactly one '{}' for the ...
    """
    import string

    for template in templates:
        if not isinstance(template, str):
            continue  # the type is the caller's check
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(template)]
        except ValueError as err:  # an unmatched brace
            raise ValueError(
                f"`{name}` entry {template!r} is no valid format string ({err}); write one "
                "'{}' for the class name and '{{' / '}}' for literal braces."
            ) from err
        fields = [field for field in fields if field is not None]
        if fields != [""]:
            raise ValueError(
                f"`{name}` entry {template!r} must hold exactly one '{{}}' for the class name, "
                f"got {len(fields)} field{'s' if len(fields) != 1 else ''}"
                f"{'' if all(f == '' for f in fields) else f' {fields}'}."
            )


def check_checkpoint_file(path: Any, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``path`` is a complete checkpoint file.

    Cheap: reads the file's size and its index only (a ``torch.save`` zip archive's
    central directory, a safetensors header), not the tensors. An empty file, a truncated
    archive (its directory sits at the end) and a file that is neither format are caught;
    damage inside a complete archive is found when the file is loaded.

    Example:
        >>> check_checkpoint_file("no/such/file.ckpt", "ckpt_path")
        Traceback (most recent call last):
        ...
        ValueError: `ckpt_path`='no/such/file.ckpt' is not an existing file.
    """
    import json
    import os
    import zipfile

    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`{name}` must be a path, got {path!r} ({_type_name(path)}).")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"`{name}`={path!r} is not an existing file.")
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"`{name}`={path!r} is an empty file (0 bytes), not a checkpoint.")
    with open(path, "rb") as file:
        head = file.read(8)
    if path.endswith(".safetensors"):
        header_size = int.from_bytes(head, "little") if len(head) == 8 else size
        try:
            with open(path, "rb") as file:
                file.seek(8)
                header = json.loads(file.read(header_size)) if 8 + header_size <= size else None
            end = max(
                (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                default=0,
            )
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            header = None
        if header is None or 8 + header_size + end > size:
            raise ValueError(
                f"`{name}`={path!r} is no complete safetensors file ({size} bytes): it is "
                "truncated or corrupt."
            )
        return
    if path.endswith(".npy") or head.startswith(b"\x80"):  # numpy array, legacy torch pickle
        return
    problem = ""
    if not zipfile.is_zipfile(path):
        problem = "it is truncated or corrupt (no complete zip archive, as torch.save writes)"
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            names, problem = [], f"its archive is corrupt ({err})"
        if not problem and not path.endswith(".npz"):
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
                problem = "the zip archive holds no torch.save data (no data.pkl)"
    if problem:
        raise ValueError(f"`{name}`={path!r} is no readable checkpoint ({size} bytes): {problem}.")


def load_checkpoint(path: Any, name: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, after :func:`check_checkpoint_file`.

    Raises:
        ValueError: for a missing, empty or corrupt file, or one that ``torch.load`` with
            ``weights_only=True`` refuses (naming the argument, the file and the reason).
    """
    check_checkpoint_file(path, name)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as err:
        raise ValueError(
            f"`{name}`={os.fspath(path)!r} could not be loaded as a checkpoint "
            f"(torch.load(weights_only=True) failed: {str(err).splitlines()[0]})."
        ) from err


def check_feature_dtypes(**features: torch.Tensor | None) -> None:
    """Raise ``TypeError`` unless the given feature tensors share one floating-point dtype.

    ``None`` entries are skipped. Mixed dtypes would be promoted silently by some
    operations and fail inside a matrix product in others.

    Example:
        >>> check_feature_dtypes(image_features=torch.ones(2, 3), text_features=torch.ones(2, 3))
        >>> check_feature_dtypes(image_features=torch.ones(2, 3),
        ...                      text_features=torch.ones(2, 3, dtype=torch.float64))
        Traceback (most recent call last):
        ...
        TypeError: `image_features` and `text_features` must share one dtype, got ...
    """
    given = {name: tensor for name, tensor in features.items() if tensor is not None}
    for name, tensor in given.items():
        if not tensor.is_floating_point():
            raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {tensor.dtype}.")
    if len({tensor.dtype for tensor in given.values()}) > 1:
        names = " and ".join(f"`{name}`" for name in given)
        dtypes = " and ".join(str(tensor.dtype) for tensor in given.values())
        raise TypeError(f"{names} must share one dtype, got {dtypes}.")


def check_logit_scalar(
    value: Any, name: str, features: torch.Tensor, *, positive: bool
) -> torch.Tensor | float:
    """Return a logit scale or bias as a ``float`` or a 0-d tensor, checking what is free.

    A number must be finite (and above 0 when ``positive``); it is checked here. A tensor
    must hold one element (a 0-d or 1-element tensor: more would broadcast over the
    logits), be floating point and not less precise than ``features`` (a float32 scale
    with half-precision features, as under autocast, is fine); it comes back as a 0-d view.
    Its value is checked with the loss, by :func:`check_finite_loss`, so the common path
    adds no host sync.

    Example:
        >>> check_logit_scalar(10, "logit_scale", torch.ones(2, 2), positive=True)
        10.0
        >>> check_logit_scalar(torch.ones(1), "logit_scale", torch.ones(2, 2), positive=True)
        tensor(1.)
        >>> check_logit_scalar(torch.ones(3), "logit_scale", torch.ones(2, 2), positive=True)
        Traceback (most recent call last):
        ...
        ValueError: `logit_scale` must be a scalar (...), got a tensor of shape (3,).
        >>> check_logit_scalar(-1.0, "logit_scale", torch.ones(2, 2), positive=True)
        Traceback (most recent call last):
        ...
        ValueError: `logit_scale` must be a finite number in (0, inf), got -1.0.
    """
    if not isinstance(value, torch.Tensor):
        if positive:
            return check_float(value, name, low=0, low_open=True)
        return check_float(value, name)
    if value.numel() != 1:
        raise ValueError(
            f"`{name}` must be a scalar (a number, or a 0-d or 1-element tensor), got a "
            f"tensor of shape {tuple(value.shape)}."
        )
    if not value.is_floating_point():
        raise TypeError(
            f"`{name}` must be a number or a floating-point tensor, got a tensor of dtype "
            f"{value.dtype}."
        )
    if torch.promote_types(value.dtype, features.dtype) != value.dtype:
        raise TypeError(
            f"`{name}` of dtype {value.dtype} is less precise than the features "
            f"({features.dtype}); pass it in {features.dtype} or wider (float32 with "
            "half-precision features, as autocast keeps it)."
        )
    return value.reshape(())


def check_finite_loss(
    loss: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None = None,
    **inputs: torch.Tensor | None,
) -> torch.Tensor:
    """Return ``loss``; raise ``ValueError`` if it, ``logit_scale`` or ``logit_bias`` is bad.

    One host sync covers the loss being finite, the tensor ``logit_scale`` being finite and
    positive and the tensor ``logit_bias`` being finite (numbers were checked by
    :func:`check_logit_scalar`). Only on failure are the ``inputs`` searched, by
    :func:`explain_non_finite`, for the one at fault: the finite path makes no pass over
    the features.

    Example:
        >>> check_finite_loss(torch.tensor(0.5), torch.tensor(10.0))
        tensor(0.5000)
        >>> check_finite_loss(torch.tensor(0.5), torch.tensor(-1.0))
        Traceback (most recent call last):
        ...
        ValueError: `logit_scale` must be positive (the exponentiated scale), got -1.
    """
    ok = torch.isfinite(loss).all()
    scale_tensor = isinstance(logit_scale, torch.Tensor)
    bias_tensor = isinstance(logit_bias, torch.Tensor)
    if scale_tensor:
        ok = ok & torch.isfinite(logit_scale).all() & (logit_scale > 0).all()
    if bias_tensor:
        ok = ok & torch.isfinite(logit_bias).all()
    if bool(ok):
        return loss
    if scale_tensor:
        scale = float(logit_scale.detach().reshape(-1)[0])
        if scale <= 0:
            raise ValueError(
                f"`logit_scale` must be positive (the exponentiated scale), got {scale:g}."
            )
    explain_non_finite("loss", **inputs, logit_scale=logit_scale, logit_bias=logit_bias)
    return loss  # unreachable: explain_non_finite always raises


def check_scored_rows(num_local: int, num_scored: int, reduction: str) -> None:
    """Raise ``ValueError`` for a contrastive loss with nothing to contrast.

    ``num_scored`` rows are scored against (the global batch): one pair alone has no
    negatives, so the loss would be a constant 0. ``num_local`` rows of this process may
    be 0 (another rank holds the batch), unless ``reduction="mean"`` asks for their mean.

    Example:
        >>> check_scored_rows(1, 4, "mean")
        >>> check_scored_rows(1, 1, "mean")
        Traceback (most recent call last):
        ...
        ValueError: A contrastive loss needs at least 2 image-text pairs to score against ...
    """
    if num_scored < 2:
        raise ValueError(
            "A contrastive loss needs at least 2 image-text pairs to score against (one pair "
            f"has no negatives), got {num_scored}."
        )
    if num_local == 0 and reduction == "mean":
        raise ValueError(
            "`image_features` holds no rows, and the mean loss of no rows is undefined; "
            "use reduction='sum' or 'none' for a process without local rows."
        )


def check_paired_loss_inputs(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    all_image_features: torch.Tensor | None,
    all_text_features: torch.Tensor | None,
    label_offset: int,
    reduction: str,
) -> tuple[int, torch.Tensor | float, torch.Tensor, torch.Tensor, dict[str, torch.Tensor | None]]:
    """The checks of a loss whose local pairs are scored against both global modalities.

    Shared by :func:`~lightning_plugins.functional.clip_loss` and
    :func:`~lightning_plugins.functional.cwcl_loss`.

    Returns:
        ``(label_offset, logit_scale, all_images, all_texts, features)``: the checked
        offset and scale, the global features (the local ones when not given), and the
        feature inputs by name for :func:`check_finite_loss`.
    """
    check_reduction(reduction)
    check_feature_pair(image_features, text_features)
    label_offset = check_int(label_offset, "label_offset")
    all_images = image_features if all_image_features is None else all_image_features
    all_texts = text_features if all_text_features is None else all_text_features
    check_global_features(
        image_features,
        label_offset,
        all_image_features=all_images,
        all_text_features=all_texts,
    )
    features = {
        "image_features": image_features,
        "text_features": text_features,
        "all_image_features": all_image_features,
        "all_text_features": all_text_features,
    }
    check_feature_dtypes(**features)
    logit_scale = check_logit_scalar(logit_scale, "logit_scale", image_features, positive=True)
    check_scored_rows(image_features.shape[0], all_texts.shape[0], reduction)
    return label_offset, logit_scale, all_images, all_texts, features
