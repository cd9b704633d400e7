"""Each step against an independent numpy reference (or Pillow's own output) on generated images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mlfs.preprocess.pipeline import build_pipeline
from mlfs.preprocess.steps import ImageFailure, process

DIGEST = "ab" * 32


def _png(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="PNG")
    return out.getvalue()


def _image(h: int, w: int, seed: int = 1, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _run(steps: list, data: bytes, seed: int = 0, digest: str = DIGEST) -> np.ndarray:
    pipeline = build_pipeline({"steps": steps + [{"arrays": {"format": "npy"}}], "seed": seed})
    return np.load(io.BytesIO(process(pipeline.sample_json(), data, digest)), allow_pickle=False)


def test_normalize_matches_numpy_to_1e_6() -> None:
    img = _image(37, 53)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    got = _run(["decode", {"normalize": {"mean": mean, "std": std}}], _png(img))
    reference = (img.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)
    assert got.dtype == np.float32, "normalize must produce float32"
    assert np.abs(got - reference).max() <= 1e-6, "normalize differs from the numpy reference by more than 1e-6"


@pytest.mark.parametrize("filt", ["nearest", "bilinear", "bicubic", "lanczos"])
def test_resize_shorter_side_within_one_of_pillow(filt: str) -> None:
    img = _image(90, 150, seed=2)
    got = _run(["decode", {"resize": {"size": 64, "filter": filt}}], _png(img))
    # Independent size arithmetic: shorter side 64, the other side scaled and truncated.
    expected_size = (int(64 * 150 / 90), 64)
    pillow = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
              "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}[filt]
    reference = np.asarray(Image.fromarray(img).resize(expected_size, pillow))
    assert got.shape == reference.shape, f"resize produced {got.shape}, expected {reference.shape}"
    assert np.abs(got.astype(int) - reference.astype(int)).max() <= 1, f"{filt} resize differs from Pillow by more than 1"


def test_resize_fit_pads_to_the_box() -> None:
    img = _image(40, 80, seed=3)
    got = _run(["decode", {"resize": {"size": [60, 60], "mode": "fit", "fill": 7}}], _png(img))
    assert got.shape == (60, 60, 3), "fit must produce exactly the box size"
    assert (got[:14] == 7).all() and (got[-15:] == 7).all(), "fit must pad above and below with the fill value"


def test_rotate_90_equals_np_rot90() -> None:
    img = _image(31, 47, seed=4)
    got = _run(["decode", {"augment": {"ops": [{"rotate": {"degrees": 90}}]}}], _png(img))
    assert np.array_equal(got, np.rot90(img)), "rotation by 90 degrees differs from np.rot90"


def test_center_crop_is_exact() -> None:
    img = _image(50, 71, seed=5)
    got = _run(["decode", {"center_crop": {"size": [30, 20]}}], _png(img))
    top, left = (50 - 20) // 2, (71 - 30) // 2
    assert np.array_equal(got, img[top:top + 20, left:left + 30]), "center crop differs from array slicing"


def test_crop_and_grayscale() -> None:
    img = _image(20, 30, seed=6)
    got = _run(["decode", {"crop": {"box": [3, 4, 10, 8]}}, "grayscale"], _png(img))
    reference = np.asarray(Image.fromarray(img[4:12, 3:13]).convert("L"))[:, :, None]
    assert np.array_equal(got, reference), "crop then grayscale differs from slicing then Pillow's L conversion"


def test_chw_layout_is_exact() -> None:
    img = _image(12, 17, seed=7)
    got = _run(["decode", {"to_layout": {"layout": "CHW"}}], _png(img))
    assert np.array_equal(got, img.transpose(2, 0, 1)), "CHW layout differs from transpose(2, 0, 1)"


def test_seeded_augment_is_byte_identical_when_repeated() -> None:
    img = _png(_image(64, 64, seed=8))
    steps = ["decode", {"augment": {"ops": [{"random_resized_crop": {"size": 32}}, {"hflip": {}},
                                            {"rotate": {"degrees": [-30, 30]}},
                                            {"color_jitter": {"brightness": 0.4, "contrast": 0.4,
                                                              "saturation": 0.4, "hue": 0.1}}]}}]
    first = _run(steps, img, seed=3)
    again = _run(steps, img, seed=3)
    assert first.tobytes() == again.tobytes(), "a seeded augment run must repeat byte for byte"
    others = {_run(steps, img, seed=s).tobytes() for s in range(4, 9)}
    assert len(others) > 1, "the augment ignored the seed"


def test_decode_applies_exif_orientation() -> None:
    img = _image(10, 20, seed=9)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise: viewers turn it upright
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="PNG", exif=exif)
    got = _run(["decode"], out.getvalue())
    assert np.array_equal(got, np.rot90(img, k=-1)), "EXIF orientation 6 must be applied at decode"


def test_encode_never_takes_normalized_floats() -> None:
    from mlfs.preprocess.pipeline import PipelineError

    with pytest.raises(PipelineError, match=r"^step 3 \(encode\): cannot write float arrays"):
        build_pipeline({"steps": ["decode", "normalize", {"encode": {"format": "png"}}]})


def test_encode_webp_roundtrips_size() -> None:
    img = _image(33, 21, seed=10)
    pipeline = build_pipeline({"steps": ["decode", {"encode": {"format": "webp", "quality": 80}}]})
    out = Image.open(io.BytesIO(process(pipeline.sample_json(), _png(img), DIGEST)))
    assert (out.format, out.size) == ("WEBP", (21, 33)), "encode must write a WebP of the same size"


def test_center_crop_larger_than_image_fails_the_item() -> None:
    pipeline = build_pipeline({"steps": ["decode", {"center_crop": {"size": 100}}, "arrays"]})
    with pytest.raises(ImageFailure, match="smaller than the center crop"):
        process(pipeline.sample_json(), _png(_image(10, 10)), DIGEST)


@pytest.mark.parametrize("channels,mean,std", [(1, [0.5], [0.25]), (3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                                               (4, [0.3], [0.7])])
def test_normalize_of_8_bit_images_is_bit_identical_to_float64_arithmetic(channels: int, mean: list, std: list) -> None:
    img = _image(41, 29, seed=channels, channels=channels)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    got = _run([{"decode": {"mode": mode}}, {"normalize": {"mean": mean, "std": std}}], _png(img))
    pixels = img if channels > 1 else img[:, :, None]
    reference = ((pixels.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)).astype(np.float32)
    assert got.tobytes() == reference.tobytes(), "the 8-bit lookup must round exactly like per-pixel float64 arithmetic"


@pytest.mark.parametrize("layout", ["CHW", "HWC"])
def test_npy_output_is_byte_identical_to_np_save(layout: str) -> None:
    pipeline = build_pipeline({"steps": ["decode", "normalize", {"to_layout": {"layout": layout}},
                                         {"arrays": {"format": "npy"}}]})
    data = process(pipeline.sample_json(), _png(_image(23, 31)), DIGEST)
    out = io.BytesIO()
    np.save(out, np.load(io.BytesIO(data), allow_pickle=False), allow_pickle=False)
    assert data == out.getvalue(), "the .npy result must be exactly what np.save writes"


PILLOW_FILTERS = {"nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX,
                  "bilinear": Image.Resampling.BILINEAR, "hamming": Image.Resampling.HAMMING,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def _resize_crop_cases(seed: int, count: int):  # type: ignore[no-untyped-def]
    """(image, resize params, crop step, expected size, expected box): random sizes up and
    down, every resize mode but fit, both crops; the size arithmetic written out here."""
    rng = np.random.default_rng(seed)
    for case in range(count):
        w, h = (int(v) for v in rng.integers(6, 260, 2))
        channels = (3, 1)[case % 2]
        mode = ("shorter", "longer", "exact")[case % 3]
        if mode == "exact":
            size: int | list[int] = [int(v) for v in rng.integers(4, 300, 2)]
            out = (size[0], size[1])
        else:
            size = int(rng.integers(4, 300))
            short = (w <= h) == (mode == "shorter")  # the side given is the width
            out = (size, max(1, int(size * h / w))) if short else (max(1, int(size * w / h)), size)
        cw, ch = int(rng.integers(1, out[0] + 1)), int(rng.integers(1, out[1] + 1))
        if case % 4 < 2:
            left, top = (out[0] - cw) // 2, (out[1] - ch) // 2
            crop: dict = {"center_crop": {"size": [cw, ch]}}
        else:
            left, top = int(rng.integers(0, out[0] - cw + 1)), int(rng.integers(0, out[1] - ch + 1))
            crop = {"crop": {"box": [left, top, cw, ch]}}
        yield _image(h, w, seed=case, channels=channels), {"size": size, "mode": mode}, crop, out, \
            (left, top, left + cw, top + ch)


@pytest.mark.parametrize("filt", sorted(PILLOW_FILTERS))
def test_resize_then_crop_is_within_one_of_pillow_resizing_whole_then_cropping(filt: str) -> None:
    # A resize followed by a crop computes only the kept pixels; the cases include sizes
    # for which Pillow makes its vertical pass first and sizes for which it does not.
    worst = 0
    for img, resize, crop, out, box in _resize_crop_cases(seed=11, count=60):
        got = _run(["decode" if img.ndim == 3 else {"decode": {"mode": "L"}},
                    {"resize": {**resize, "filter": filt}}, crop], _png(img))
        reference = np.asarray(Image.fromarray(img).resize(out, PILLOW_FILTERS[filt]).crop(box))
        reference = reference if reference.ndim == 3 else reference[:, :, None]
        assert got.shape == reference.shape, f"resize {resize} then {crop} gave {got.shape}, not {reference.shape}"
        worst = max(worst, int(np.abs(got.astype(int) - reference.astype(int)).max()))
    # BOX and NEAREST are resized whole and then cut, so they match exactly.
    limit = 0 if filt in ("box", "nearest") else 1
    assert worst <= limit, f"{filt}: resize then crop differs from Pillow's whole resize then crop by {worst}"


def test_resize_followed_by_a_crop_is_computed_as_one_step() -> None:
    from mlfs.preprocess.steps import _plan, fusion_matches_pillow, resize_crop

    pipeline = build_pipeline({"steps": ["decode", {"resize": {"size": 256}}, {"center_crop": {"size": 224}},
                                         "normalize", {"arrays": {"format": "npy"}}]})
    _, plan = _plan(pipeline.sample_json())
    assert [fn.__name__ for fn, _ in plan] == ["decode", "resize_crop", "normalize", "arrays"]
    assert plan[1][0] is resize_crop
    assert fusion_matches_pillow(), "the installed Pillow resamples unlike the fused resize: it is never used"


def test_rgba_resize_then_crop_is_exactly_pillows() -> None:
    img = _image(70, 90, seed=12, channels=4)
    got = _run([{"decode": {"mode": "RGBA"}}, {"resize": {"size": 50, "filter": "bicubic"}},
                {"center_crop": {"size": 40}}], _png(img))
    whole = Image.fromarray(img).resize((int(50 * 90 / 70), 50), Image.Resampling.BICUBIC)
    left, top = (whole.width - 40) // 2, (whole.height - 40) // 2
    reference = np.asarray(whole.crop((left, top, left + 40, top + 40)))
    assert np.array_equal(got, reference), "RGBA (resized premultiplied) must be resized whole, then cut"


def test_crop_larger_than_the_resized_image_fails_the_item() -> None:
    pipeline = build_pipeline({"steps": ["decode", {"resize": {"size": 20}}, {"center_crop": {"size": 24}},
                                         {"arrays": {"format": "npy"}}]})
    with pytest.raises(ImageFailure, match=r"^image 26x20 is smaller than the center crop 24x24$"):
        process(pipeline.sample_json(), _png(_image(30, 40)), DIGEST)


@pytest.mark.parametrize("filt", ["bilinear", "bicubic", "lanczos"])
@pytest.mark.parametrize("shape,resize,crop", [
    ((900, 4), {"size": [3, 150], "mode": "exact"}, {"center_crop": {"size": [2, 100]}}),  # over 100:1, shrinking
    ((700, 5), {"size": 3, "mode": "shorter"}, {"crop": {"box": [0, 10, 3, 300]}}),
    ((40, 30), {"size": [30, 1], "mode": "exact"}, {"center_crop": {"size": [7, 1]}}),  # 1-pixel output
    ((40, 30), {"size": [30, 90], "mode": "exact"}, {"crop": {"box": [0, 0, 30, 90]}}),  # width unchanged
    ((37476, 2), {"size": [2, 57278], "mode": "exact"}, {"crop": {"box": [0, 3, 2, 57271]}}),  # a box over 32k lines
])
def test_resize_then_crop_at_the_edges_is_within_one_of_pillow(filt: str, shape: tuple, resize: dict,
                                                                crop: dict) -> None:
    img = _image(*shape, seed=13, channels=1)
    got = _run([{"decode": {"mode": "L"}}, {"resize": {**resize, "filter": filt}}, crop], _png(img))
    size = tuple(resize["size"]) if resize["mode"] == "exact" else (resize["size"], int(resize["size"] * shape[0] / shape[1]))
    whole = Image.fromarray(img).resize(size, PILLOW_FILTERS[filt])
    if "crop" in crop:
        left, top, cw, ch = crop["crop"]["box"]
    else:
        cw, ch = crop["center_crop"]["size"]
        left, top = (whole.width - cw) // 2, (whole.height - ch) // 2
    reference = np.asarray(whole.crop((left, top, left + cw, top + ch)))[:, :, None]
    assert got.shape == reference.shape, f"gave {got.shape}, not {reference.shape}"
    assert np.abs(got.astype(int) - reference.astype(int)).max() <= 1, f"{filt} differs from Pillow by more than 1"


def test_a_crop_spanning_over_4096_source_lines_is_resized_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow keeps a box in single precision: over tens of thousands of lines its sample
    # positions drift enough to move a result by 2 (shown with crafted content), so such
    # a crop must not take the boxed pass at all.
    import mlfs.preprocess.steps as steps

    def boxed(*args: object) -> None:
        raise AssertionError("the boxed pass was used")

    assert steps.fusion_matches_pillow(), "the boxed pass is never used with this Pillow"  # checked before the patch
    monkeypatch.setattr(steps, "_cut_resize", boxed)
    img = _image(5000, 2, seed=14, channels=1)
    got = _run([{"decode": {"mode": "L"}}, {"resize": {"size": [2, 6000], "mode": "exact", "filter": "bicubic"}},
                {"crop": {"box": [0, 1, 2, 5000]}}], _png(img))
    whole = np.asarray(Image.fromarray(img).resize((2, 6000), Image.Resampling.BICUBIC).crop((0, 1, 2, 5001)))
    assert np.array_equal(got[:, :, 0], whole), "a long crop must be exactly Pillow's whole resize, then cut"
    with pytest.raises(AssertionError, match="the boxed pass was used"):  # and a short one is boxed
        _run([{"decode": {"mode": "L"}}, {"resize": {"size": [2, 6000], "mode": "exact", "filter": "bicubic"}},
              {"crop": {"box": [0, 1, 2, 4000]}}], _png(img))
