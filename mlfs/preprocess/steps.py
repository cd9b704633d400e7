"""The step implementations: one input's bytes → one result's bytes (runs in worker processes).

Images stay Pillow images until `normalize` or `to_layout` turns them into numpy
arrays; `normalize` produces float32 that is never squeezed back into an 8-bit image.
Randomness (augment) comes from a numpy generator seeded from the pipeline seed and the
input's SHA-256, so a run is reproducible image by image, in any order, on any worker.

A bad input raises `ImageFailure` with a one-line reason; nothing else of the run is
affected. Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) is an error here,
not a warning.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps, UnidentifiedImageError

FILTERS = {"nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
           "hamming": Image.Resampling.HAMMING, "bicubic": Image.Resampling.BICUBIC,
           "lanczos": Image.Resampling.LANCZOS}
ENCODE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}

Data = Image.Image | np.ndarray


class ImageFailure(Exception):
    """This input cannot be processed; `str()` is the one-line reason."""


def process(sample_json: str, data: bytes, input_sha256: str) -> bytes:
    """Run the per-image pipeline (canonical JSON) on one input; the result's bytes."""
    return b"".join(process_pieces(sample_json, data, input_sha256))


def process_pieces(sample_json: str, data: bytes, input_sha256: str) -> tuple[bytes | memoryview, ...]:
    """`process`'s result as the pieces that make it up, in order, so that a caller
    copying the result into its own buffer copies each byte once."""
    seed, plan = _plan(sample_json)
    rng = np.random.default_rng(per_image_seed(seed, input_sha256))
    value: Any = data
    try:
        for fn, params in plan:
            value = fn(value, params, rng)
    except ImageFailure:
        raise
    except MemoryError:
        raise ImageFailure("out of memory while processing the image") from None
    except (OSError, ValueError, SyntaxError, TypeError, IndexError, EOFError) as exc:
        # Pillow reports damaged data from deep inside its decoders with these.
        raise ImageFailure(f"corrupt image: {_one_line(exc)}") from None
    return value if isinstance(value, tuple) else (value,)


def per_image_seed(seed: int, input_sha256: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{input_sha256}".encode()).digest()[:8], "big")


Step = Callable[[Any, Any, np.random.Generator], Any]


@functools.lru_cache(maxsize=8)
def _plan(sample_json: str) -> tuple[int, list[tuple[Step, Any]]]:
    """The pipeline's seed and the calls that carry out its steps: each step's own
    function, except that a resize followed by a crop is one call (`resize_crop`)."""
    doc = json.loads(sample_json)
    plan: list[tuple[Step, Any]] = []
    steps = doc["steps"]
    i = 0
    while i < len(steps):
        step = steps[i]
        after = steps[i + 1]["step"] if i + 1 < len(steps) else None
        if step["step"] == "resize" and after in ("center_crop", "crop"):
            plan.append((resize_crop, (step["params"], after, steps[i + 1]["params"])))
            i += 2
            continue
        plan.append((STEPS[step["step"]], step["params"]))
        i += 1
    return doc["seed"], plan


def prepare(sample_json: str) -> None:
    """Build the pipeline's plan and, if it fuses a resize and a crop, check the fusion
    against Pillow: done before forking workers, so that they inherit both."""
    _, plan = _plan(sample_json)
    if any(fn is resize_crop for fn, _ in plan):
        fusion_matches_pillow()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ----------------------------------------------------------------------- decode
def decode(data: bytes, p: dict[str, Any], rng: np.random.Generator) -> Image.Image:
    if not data:
        raise ImageFailure("empty object (0 bytes): not an image")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageFailure(f"decompression bomb refused: {_one_line(exc)} (limit {limit} pixels)") from None
    except UnidentifiedImageError:
        raise ImageFailure("not an image (no decoder recognises these bytes)") from None
    except OSError as exc:
        raise ImageFailure(f"truncated or corrupt image: {_one_line(exc)}") from None
    ImageOps.exif_transpose(img, in_place=True)  # in place: no copy when there is nothing to turn
    return img.convert(p["mode"]) if img.mode != p["mode"] else img


# ------------------------------------------------------------------- geometry
def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) with the shorter side `size` and the aspect ratio kept (the longer side truncated)."""
    if width <= height:
        return size, max(1, int(size * height / width))
    return max(1, int(size * width / height)), size


def longer_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    if width >= height:
        return size, max(1, int(size * height / width))
    return max(1, int(size * width / height)), size


def center_box(width: int, height: int, crop_w: int, crop_h: int) -> tuple[int, int, int, int]:
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def resized_size(width: int, height: int, p: dict[str, Any]) -> tuple[int, int]:
    """The size a resize that is not `fit` gives an image of this size."""
    if p["mode"] == "shorter":
        return shorter_side_size(width, height, p["size"])
    if p["mode"] == "longer":
        return longer_side_size(width, height, p["size"])
    return p["size"][0], p["size"][1]


def resize(img: Image.Image, p: dict[str, Any], rng: np.random.Generator) -> Image.Image:
    filt = FILTERS[p["filter"]]
    w, h = img.size
    if p["mode"] != "fit":
        return img.resize(resized_size(w, h, p), filt)
    box_w, box_h = p["size"]
    scale = min(box_w / w, box_h / h)
    inner = (max(1, min(box_w, round(w * scale))), max(1, min(box_h, round(h * scale))))
    canvas = Image.new(img.mode, (box_w, box_h), _fill_for(img.mode, p["fill"]))
    canvas.paste(img.resize(inner, filt), ((box_w - inner[0]) // 2, (box_h - inner[1]) // 2))
    return canvas


def _fill_for(mode: str, fill: list[int]) -> Any:
    if mode == "L":
        return fill[0]
    if mode == "RGBA":
        return (*fill, 255)
    return tuple(fill)


def _center_crop_box(width: int, height: int, p: dict[str, Any]) -> tuple[int, int, int, int]:
    cw, ch = p["size"]
    if cw > width or ch > height:
        raise ImageFailure(f"image {width}x{height} is smaller than the center crop {cw}x{ch}")
    return center_box(width, height, cw, ch)


def _crop_box(width: int, height: int, p: dict[str, Any]) -> tuple[int, int, int, int]:
    left, top, cw, ch = p["box"]
    if left + cw > width or top + ch > height:
        raise ImageFailure(f"crop box {p['box']} reaches outside the {width}x{height} image")
    return left, top, left + cw, top + ch


CROP_BOXES = {"center_crop": _center_crop_box, "crop": _crop_box}


def center_crop(img: Image.Image, p: dict[str, Any], rng: np.random.Generator) -> Image.Image:
    return img.crop(_center_crop_box(img.width, img.height, p))


def crop(img: Image.Image, p: dict[str, Any], rng: np.random.Generator) -> Image.Image:
    return img.crop(_crop_box(img.width, img.height, p))


# Filters whose weight falls to zero at the edge of their support, with that support
# (in source pixels at scale 1). Moving a sample position by a rounding error changes
# a weight of theirs by about as much, never by a whole tap; BOX and NEAREST jump there,
# so a resize by them is computed whole, then cut.
_SMOOTH_SUPPORT = {"bilinear": 1.0, "hamming": 1.0, "bicubic": 2.0, "lanczos": 3.0}


def resize_crop(img: Image.Image, spec: tuple[dict[str, Any], str, dict[str, Any]],
                rng: np.random.Generator) -> Image.Image:
    """A resize followed by a crop, computing little more than the pixels the crop keeps.

    Resizing the whole image and cutting the crop out of it computes every pixel of the
    resized image; imagenet-224 throws 40 % of them away. Pillow resizes in two passes,
    one per axis, with an 8-bit image between them. Here the first pass is Pillow's
    own, exact, over only the source lines the second one reads; the second covers only
    the crop, given to Pillow as a box. The box's sample positions equal the whole
    resize's up to rounding (Pillow takes a box in single precision), which moves a
    result by at most 1: within the ±1 a resize promises against Pillow's output. The
    passes run in the order Pillow would choose, and the whole is checked against the
    installed Pillow once per process.
    """
    p, crop_step, crop_params = spec
    # fit pads; RGBA is resized premultiplied, which two calls would round twice.
    if (p["mode"] != "fit" and p["filter"] in _SMOOTH_SUPPORT and img.mode in ("RGB", "L")
            and fusion_matches_pillow()):
        out = resized_size(img.width, img.height, p)
        box = CROP_BOXES[crop_step](*out, crop_params)
        if _boxed_span(img.size, out, box) <= _MAX_BOXED_SPAN:
            return _cut_resize(img, out, box, p["filter"])
    return STEPS[crop_step](resize(img, p, rng), crop_params, rng)


# Pillow keeps a box in single precision, so the error of its sample positions grows
# with the source lines the box spans: about 1e-5 of a pixel for a 224-pixel crop, but
# enough to move a result by 2 past 32,768 lines. Longer spans are resized whole.
_MAX_BOXED_SPAN = 4096


def _boxed_span(size: tuple[int, int], out: tuple[int, int], box: tuple[int, int, int, int]) -> float:
    """Source lines the box of the second (boxed) pass spans."""
    (w, h), (out_w, out_h) = size, out
    if _vertical_first(w, h, out_w, out_h):
        return (box[2] - box[0]) * w / out_w
    return (box[3] - box[1]) * h / out_h


def _cut_resize(img: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int], filt: str) -> Image.Image:
    """`img.resize(size, filt).crop(box)`, within ±1 (`filt` smooth, `img` RGB or L)."""
    if _vertical_first(*img.size, *size):
        # The same computation on the image turned on its side (transposes are exact).
        sideways = Image.Transpose.TRANSPOSE
        left, top, right, bottom = box
        turned = _cut_resize_horizontal_first(img.transpose(sideways), (size[1], size[0]),
                                              (top, left, bottom, right), filt)
        return turned.transpose(sideways)
    return _cut_resize_horizontal_first(img, size, box, filt)


def _cut_resize_horizontal_first(img: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int],
                                 filt: str) -> Image.Image:
    (w, h), (out_w, out_h) = img.size, size
    left, top, right, bottom = box
    resample = FILTERS[filt]
    scale = h / out_h  # source rows per output row
    if out_h == h:
        first, last = top, bottom  # no vertical pass: the rows themselves
    else:
        # The source rows the vertical pass reads for output rows top..bottom, with a
        # margin: rows beyond its taps change nothing, rows missing would.
        reach = _SMOOTH_SUPPORT[filt] * max(scale, 1.0) + 2
        first, last = max(0, int(top * scale - reach)), min(h, int(bottom * scale + reach) + 1)
    strip = img.crop((0, first, w, last))
    if out_w != w:
        strip = strip.resize((out_w, last - first), resample)  # the horizontal pass, exact
    strip = strip.crop((left, 0, right, last - first))
    if out_h == h:
        return strip
    return strip.resize((right - left, bottom - top), resample,
                        box=(0, top * scale - first, right - left, bottom * scale - first))


_PILLOW_VERSION = tuple(int(part) for part in Image.__version__.split(".")[:2])


def _vertical_first(w: int, h: int, out_w: int, out_h: int) -> bool:
    """Whether the installed Pillow resizes (w, h) to (out_w, out_h) vertically first."""
    if _PILLOW_VERSION >= (13, 0):  # when the height shrinks by over twice the width's pixels
        return h - out_h > 0 and h - out_h > 2 * (w - out_w)
    if _PILLOW_VERSION >= (12, 2):  # an image over 100 times taller than wide, shrinking
        return h > 100 * w and out_h < h
    return False


@functools.lru_cache(maxsize=1)
def fusion_matches_pillow() -> bool:
    """Whether `_cut_resize` agrees with the installed Pillow within ±1, on sizes that
    make each Pillow version since 10 choose each pass order (the last is over 100 times
    taller than wide); a Pillow that resamples differently gets whole resizes then crops
    (slower, never wrong)."""
    rng = np.random.default_rng(0)
    cases = (((90, 300), (120, 140)), ((300, 90), (140, 120)), ((61, 47), (61, 80)), ((4, 500), (3, 150)))
    for (w, h), size in cases:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        box = center_box(size[0], size[1], size[0] * 2 // 3, size[1] * 2 // 3)
        for filt in ("bilinear", "lanczos"):
            whole = np.asarray(img.resize(size, FILTERS[filt]).crop(box), dtype=np.int16)
            if np.abs(np.asarray(_cut_resize(img, size, box, filt), dtype=np.int16) - whole).max() > 1:
                return False
    return True


def grayscale(img: Image.Image, p: dict[str, Any], rng: np.random.Generator) -> Image.Image:
    gray = img.convert("L")
    return gray.convert("RGB") if p["channels"] == 3 else gray


# ---------------------------------------------------------------------- augment
def augment(img: Image.Image, p: dict[str, Any], rng: np.random.Generator) -> Image.Image:
    for op in p["ops"]:
        name, params = next(iter(op.items()))
        img = AUGMENTS[name](img, params, rng)
    return img


def _hflip(img: Image.Image, p: dict[str, Any], rng: np.random.Generator) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < p["p"] else img


def _vflip(img: Image.Image, p: dict[str, Any], rng: np.random.Generator) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_TOP_BOTTOM) if rng.random() < p["p"] else img


def _rotate(img: Image.Image, p: dict[str, Any], rng: np.random.Generator) -> Image.Image:
    if rng.random() >= p["p"]:
        return img
    lo, hi = p["degrees"]
    angle = lo if lo == hi else float(rng.uniform(lo, hi))
    # Counter-clockwise, like np.rot90; multiples of 90 are exact transposes in Pillow.
    return img.rotate(angle, resample=FILTERS[p["filter"]], expand=p["expand"], fillcolor=_fill_for(img.mode, p["fill"]))


def _color_jitter(img: Image.Image, p: dict[str, Any], rng: np.random.Generator) -> Image.Image:
    if rng.random() >= p["p"]:
        return img
    for name, enhancer in (("brightness", ImageEnhance.Brightness), ("contrast", ImageEnhance.Contrast),
                           ("saturation", ImageEnhance.Color)):
        amount = p[name]
        if amount:
            img = enhancer(img).enhance(float(rng.uniform(1 - amount, 1 + amount)))
    if p["hue"] and img.mode in ("RGB", "RGBA"):
        shift = int(round(float(rng.uniform(-p["hue"], p["hue"])) * 255))
        alpha = img.getchannel("A") if img.mode == "RGBA" else None
        h, s, v = img.convert("HSV").split()
        h = h.point(lambda x: (x + shift) % 256)
        img = Image.merge("HSV", (h, s, v)).convert("RGB")
        if alpha is not None:
            img.putalpha(alpha)
    return img


def _random_resized_crop(img: Image.Image, p: dict[str, Any], rng: np.random.Generator) -> Image.Image:
    width, height = img.size
    area = width * height
    lo, hi = p["scale"]
    log_ratio = (math.log(p["ratio"][0]), math.log(p["ratio"][1]))
    for _ in range(10):
        target = area * float(rng.uniform(lo, hi))
        ratio = math.exp(float(rng.uniform(*log_ratio)))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= width and 0 < ch <= height:
            left = int(rng.integers(0, width - cw + 1))
            top = int(rng.integers(0, height - ch + 1))
            break
    else:  # the whole image, cut to the nearest allowed aspect ratio, centred
        ratio = min(max(width / height, p["ratio"][0]), p["ratio"][1])
        cw, ch = (width, round(width / ratio)) if width / height > ratio else (round(height * ratio), height)
        cw, ch = min(cw, width), min(ch, height)
        left, top = (width - cw) // 2, (height - ch) // 2
    return img.resize(tuple(p["size"]), FILTERS[p["filter"]], box=(left, top, left + cw, top + ch))


AUGMENTS = {"hflip": _hflip, "vflip": _vflip, "rotate": _rotate, "color_jitter": _color_jitter,
            "random_resized_crop": _random_resized_crop}


# ----------------------------------------------------------------------- arrays
def _as_array(value: Data) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    arr = np.asarray(value)
    return arr[:, :, None] if arr.ndim == 2 else arr


def normalize(value: Data, p: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    arr = _as_array(value)
    channels = arr.shape[2]
    if len(p["mean"]) not in (1, channels):
        raise ImageFailure(f"normalize has {len(p['mean'])} mean values but the image has {channels} channels")
    if arr.dtype != np.uint8:
        # float64 arithmetic, one rounding to float32 at the end.
        mean, std = np.asarray(p["mean"], dtype=np.float64), np.asarray(p["std"], dtype=np.float64)
        return ((arr.astype(np.float64) / p["scale"] - mean) / std).astype(np.float32)
    # An 8-bit channel has 256 values: the same float64 arithmetic on each of them,
    # rounded once to float32, then looked up (bit-identical to computing every pixel,
    # in a fraction of the time). The result is channel-planar in memory, so that a
    # CHW layout that follows needs no copy.
    table = _normalize_table(float(p["scale"]), tuple(p["mean"]), tuple(p["std"]), channels)
    height, width = arr.shape[:2]
    planes = np.empty((channels, height, width), dtype=np.float32)
    for c in range(channels):
        np.take(table[c], arr[:, :, c], out=planes[c], mode="clip")  # uint8: always in range
    return planes.transpose(1, 2, 0)


@functools.lru_cache(maxsize=32)
def _normalize_table(scale: float, mean: tuple[float, ...], std: tuple[float, ...], channels: int) -> np.ndarray:
    values = np.arange(256, dtype=np.float64)[None, :]
    m = np.broadcast_to(np.asarray(mean, dtype=np.float64), (channels,))[:, None]
    s = np.broadcast_to(np.asarray(std, dtype=np.float64), (channels,))[:, None]
    return ((values / scale - m) / s).astype(np.float32)


def to_layout(value: Data, p: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    arr = _as_array(value)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)) if p["layout"] == "CHW" else arr


def encode(img: Image.Image, p: dict[str, Any], rng: np.random.Generator) -> bytes:
    fmt = ENCODE_FORMATS[p["format"]]
    if fmt == "JPEG" and img.mode == "RGBA":
        raise ImageFailure("jpeg cannot store an alpha channel; decode with mode RGB")
    out = io.BytesIO()
    options = {"quality": p["quality"]} if "quality" in p else {}
    img.save(out, format=fmt, **options)
    return out.getvalue()


def arrays(value: Data, p: dict[str, Any], rng: np.random.Generator) -> tuple[bytes, memoryview]:
    """The `.npy` bytes `np.save` writes, as its header and the array's memory (saving
    into a growing in-memory file copies a result several times)."""
    arr = np.ascontiguousarray(_as_array(value))
    if arr.dtype.hasobject:
        raise ImageFailure("arrays cannot hold Python objects")
    header = io.BytesIO()
    fields = np.lib.format.header_data_from_array_1_0(arr)
    try:
        np.lib.format.write_array_header_1_0(header, fields)
    except ValueError:  # a header too long for format 1.0, as np.save decides
        np.lib.format.write_array_header_2_0(header, fields)
    return header.getvalue(), arr.data.cast("B")


STEPS = {"decode": decode, "resize": resize, "center_crop": center_crop, "crop": crop, "grayscale": grayscale,
         "augment": augment, "normalize": normalize, "to_layout": to_layout, "encode": encode, "arrays": arrays}


def output_suffix(output: dict[str, Any]) -> str:
    """File suffix of one sample's result for an output step's canonical parameters."""
    fmt = output["format"]
    return {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}.get(fmt, ".npy")
