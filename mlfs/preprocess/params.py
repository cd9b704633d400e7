"""Parameters of each step: checked, defaults filled in, one message per problem.

Each checker takes the raw mapping from the document and returns the complete,
normalised parameters (the form that goes into the canonical JSON), or raises
`ParamError("size must be a positive integer or [w, h], got -4")`.

`VERSIONS` is the version of each step's implementation; bump it when the code of a
step changes what it produces, so cached results of the old code are not reused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlfs.preprocess.templates import IMAGENET_MEAN, IMAGENET_STD

VERSIONS = {"decode": 1, "resize": 2, "center_crop": 1, "crop": 1, "grayscale": 1, "augment": 1,
            "normalize": 1, "to_layout": 1, "encode": 1, "arrays": 1}
IMAGE_ONLY = {"resize", "center_crop", "crop", "grayscale", "augment"}
FILTERS = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
MAX_SIDE = 65_535


class ParamError(ValueError):
    pass


def _known(params: dict[str, Any], allowed: set[str]) -> None:
    for key in params:
        if key not in allowed:
            raise ParamError(f"unknown parameter {key!r} (expected {', '.join(sorted(allowed)) or 'none'})")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _size(value: Any, name: str = "size") -> list[int]:
    """An int n → [n, n]; [w, h] kept; anything else is an error."""
    if _is_int(value) and 0 < value <= MAX_SIDE:
        return [value, value]
    if isinstance(value, list) and len(value) == 2 and all(_is_int(v) and 0 < v <= MAX_SIDE for v in value):
        return list(value)
    raise ParamError(f"{name} must be a positive integer or [w, h], got {value!r}")


def _choice(params: dict[str, Any], name: str, options: tuple[str, ...], default: str) -> str:
    value = params.get(name, default)
    if value not in options:
        raise ParamError(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value


def _number(params: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = params.get(name, default)
    if not _is_num(value) or not lo <= value <= hi:
        raise ParamError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _pair(params: dict[str, Any], name: str, default: list[float], lo: float, hi: float) -> list[float]:
    value = params.get(name, default)
    if _is_num(value):
        value = [value, value]
    if (not isinstance(value, list) or len(value) != 2 or not all(_is_num(v) and lo <= v <= hi for v in value)
            or value[0] > value[1]):
        raise ParamError(f"{name} must be [min, max] with {lo} <= min <= max <= {hi}, got {value!r}")
    return [float(v) for v in value]


def _fill(params: dict[str, Any]) -> list[int]:
    value = params.get("fill", 0)
    if _is_int(value):
        value = [value] * 3
    if not isinstance(value, list) or len(value) != 3 or not all(_is_int(v) and 0 <= v <= 255 for v in value):
        raise ParamError(f"fill must be an integer 0-255 or [r, g, b], got {value!r}")
    return list(value)


def check_decode(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, {"mode"})
    return {"mode": _choice(p, "mode", ("RGB", "L", "RGBA"), "RGB")}


def check_resize(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, {"size", "mode", "filter", "fill"})
    if "size" not in p:
        raise ParamError("size is required (a positive integer or [w, h])")
    size = _size(p["size"])
    default_mode = "shorter" if _is_int(p["size"]) else "exact"
    mode = _choice(p, "mode", ("exact", "shorter", "longer", "fit"), default_mode)
    if mode in ("shorter", "longer") and not _is_int(p["size"]):
        raise ParamError(f"size must be one integer for mode {mode}, got {p['size']!r}")
    out: dict[str, Any] = {"size": size[0] if mode in ("shorter", "longer") else size, "mode": mode,
                           "filter": _choice(p, "filter", FILTERS, "bilinear")}
    if mode == "fit":
        out["fill"] = _fill(p)
    elif "fill" in p:
        raise ParamError("fill only applies to mode fit")
    return out


def check_center_crop(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, {"size"})
    if "size" not in p:
        raise ParamError("size is required (a positive integer or [w, h])")
    return {"size": _size(p["size"])}


def check_crop(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, {"box"})
    box = p.get("box")
    if (not isinstance(box, list) or len(box) != 4 or not all(_is_int(v) for v in box)
            or box[0] < 0 or box[1] < 0 or box[2] <= 0 or box[3] <= 0):
        raise ParamError(f"box must be [left, top, width, height] with left, top >= 0 and width, height > 0, got {box!r}")
    return {"box": list(box)}


def check_grayscale(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, {"channels"})
    channels = p.get("channels", 1)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ParamError(f"channels must be 1 or 3, got {channels!r}")
    return {"channels": channels}


def check_normalize(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, {"mean", "std", "scale"})
    mean, std = p.get("mean", IMAGENET_MEAN), p.get("std", IMAGENET_STD)
    for name, value in (("mean", mean), ("std", std)):
        if not isinstance(value, list) or len(value) not in (1, 3) or not all(_is_num(v) for v in value):
            raise ParamError(f"{name} must be a list of 1 or 3 numbers (one per channel), got {value!r}")
    if len(mean) != len(std):
        raise ParamError(f"mean and std must have the same length, got {len(mean)} and {len(std)}")
    if not all(v > 0 for v in std):
        raise ParamError(f"std values must be positive, got {std!r}")
    scale = p.get("scale", 255)
    if not _is_num(scale) or scale <= 0:
        raise ParamError(f"scale must be a positive number (pixel values are divided by it), got {scale!r}")
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "scale": float(scale)}


def check_to_layout(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, {"layout"})
    return {"layout": _choice(p, "layout", ("HWC", "CHW"), "CHW")}


def check_encode(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, {"format", "quality"})
    fmt = _choice(p, "format", ("png", "jpeg", "webp"), "png")
    out: dict[str, Any] = {"format": fmt}
    if fmt in ("jpeg", "webp"):
        quality = p.get("quality", 90)
        if not _is_int(quality) or not 1 <= quality <= 100:
            raise ParamError(f"quality must be an integer 1-100, got {quality!r}")
        out["quality"] = quality
    elif "quality" in p:
        raise ParamError("quality applies to jpeg and webp only")
    return out


def check_arrays(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, {"format", "shard_size"})
    fmt = _choice(p, "format", ("npy", "safetensors"), "npy")
    out: dict[str, Any] = {"format": fmt}
    if fmt == "safetensors":
        shard = p.get("shard_size", 256)
        if not _is_int(shard) or not 1 <= shard <= 100_000:
            raise ParamError(f"shard_size must be an integer 1-100000, got {shard!r}")
        out["shard_size"] = shard
    elif "shard_size" in p:
        raise ParamError("shard_size applies to format safetensors only")
    return out


# ---------------------------------------------------------------------- augment
def _aug_hflip(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, {"p"})
    return {"p": _number(p, "p", 0.5, 0.0, 1.0)}


def _aug_rotate(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, {"degrees", "p", "fill", "expand", "filter"})
    return {"degrees": _pair(p, "degrees", [-10.0, 10.0], -360.0, 360.0), "p": _number(p, "p", 1.0, 0.0, 1.0),
            "fill": _fill(p), "expand": bool(p.get("expand", True)),
            "filter": _choice(p, "filter", ("nearest", "bilinear", "bicubic"), "bilinear")}


def _aug_color_jitter(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, {"brightness", "contrast", "saturation", "hue", "p"})
    return {"brightness": _number(p, "brightness", 0.0, 0.0, 1.0), "contrast": _number(p, "contrast", 0.0, 0.0, 1.0),
            "saturation": _number(p, "saturation", 0.0, 0.0, 1.0), "hue": _number(p, "hue", 0.0, 0.0, 0.5),
            "p": _number(p, "p", 1.0, 0.0, 1.0)}


def _aug_random_resized_crop(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, {"size", "scale", "ratio", "filter"})
    if "size" not in p:
        raise ParamError("size is required (a positive integer or [w, h])")
    return {"size": _size(p["size"]), "scale": _pair(p, "scale", [0.08, 1.0], 0.0001, 1.0),
            "ratio": _pair(p, "ratio", [3 / 4, 4 / 3], 0.01, 100.0), "filter": _choice(p, "filter", FILTERS, "bilinear")}


AUGMENTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "hflip": _aug_hflip, "vflip": _aug_hflip, "rotate": _aug_rotate,
    "color_jitter": _aug_color_jitter, "random_resized_crop": _aug_random_resized_crop,
}


def check_augment(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, {"ops"})
    ops = p.get("ops")
    if not isinstance(ops, list) or not ops:
        raise ParamError(f"ops must be a non-empty list of {{op: {{params}}}} ({', '.join(AUGMENTS)}), got {ops!r}")
    out = []
    for i, raw in enumerate(ops, 1):
        if isinstance(raw, str):
            raw = {raw: {}}
        if not isinstance(raw, dict) or len(raw) != 1:
            raise ParamError(f"ops[{i}] must be a one-key mapping {{op: {{params}}}}, got {raw!r}")
        name, params = next(iter(raw.items()))
        if name not in AUGMENTS:
            raise ParamError(f"ops[{i}]: unknown augment {name!r} (expected {', '.join(AUGMENTS)})")
        if not isinstance(params, dict | None):
            raise ParamError(f"ops[{i}] ({name}): parameters must be a mapping, got {params!r}")
        try:
            out.append({name: AUGMENTS[name](dict(params or {}))})
        except ParamError as exc:
            raise ParamError(f"ops[{i}] ({name}): {exc}") from None
    return {"ops": out}


CHECKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "decode": check_decode, "resize": check_resize, "center_crop": check_center_crop, "crop": check_crop,
    "grayscale": check_grayscale, "augment": check_augment, "normalize": check_normalize,
    "to_layout": check_to_layout, "encode": check_encode, "arrays": check_arrays,
}
