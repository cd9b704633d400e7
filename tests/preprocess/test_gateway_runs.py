"""Runs over images stored in a real `mlfs serve`: the cache lives in the gateway's own
store, a re-run decodes nothing, one changed input recomputes one result, one changed
parameter recomputes all; the output mounts through `mlfs mount` and loads with
numpy and safetensors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file

from tests.gateway.server import GatewayServer
from tests.mlfs_cli import mlfs, mounted, require_fuse
from tests.preprocess.conftest import counts, jpeg, preprocess_run, upload

N_IMAGES = 2000
PIPELINE = """\
name: small-32
steps:
  - decode: {mode: RGB}
  - resize: {size: 36, mode: shorter, filter: bilinear}
  - center_crop: {size: 32}
  - normalize: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
  - to_layout: {layout: CHW}
  - arrays: {format: npy}
"""


ONE_LEVEL = 1 / 255 / 0.224 + 1e-6


def _reference(data: bytes) -> np.ndarray:
    """The pipeline above written directly with Pillow and numpy."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    size = (36, int(36 * h / w)) if w <= h else (int(36 * w / h), 36)
    img = img.resize(size, Image.Resampling.BILINEAR)
    left, top = (img.width - 32) // 2, (img.height - 32) // 2
    arr = np.asarray(img)[top:top + 32, left:left + 32].astype(np.float64) / 255.0
    arr = (arr - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return arr.transpose(2, 0, 1)


def test_gateway_runs_cache_and_mount(gateway: GatewayServer, tmp_path: Path) -> None:
    require_fuse()
    client = gateway.client()
    client.create_bucket(Bucket="vision")
    images = {f"datasets/raw/v1/img-{i:04d}.jpg": jpeg(i) for i in range(N_IMAGES)}
    upload(client, "vision", images)
    pipeline = tmp_path / "small.yaml"
    pipeline.write_text(PIPELINE)
    env = gateway.env()
    src, dst = "s3://vision/datasets/raw/v1/", "s3://vision/datasets/small/v1/train/"

    first = preprocess_run(env, pipeline, src, "--out", dst, "--workers", "2")
    assert first.returncode == 0, first.stderr
    assert counts(first.summary) == {"done": N_IMAGES, "cached": 0, "failed": 0, "decoded": N_IMAGES}
    assert first.summary["cache"] == str(gateway.data_dir / "store"), \
        "a source on a gateway sharing this filesystem must cache in the gateway's store"

    second = preprocess_run(env, pipeline, src, "--out", dst, "--workers", "2")
    assert second.returncode == 0, second.stderr
    assert counts(second.summary) == {"done": 0, "cached": N_IMAGES, "failed": 0, "decoded": 0}
    assert second.summary["written"] == 0, "identical outputs already in place are not sent again"
    ratio = first.summary["seconds"] / max(second.summary["seconds"], 1e-9)
    print(f"\n{N_IMAGES} images: first run {first.summary['seconds']:.2f} s, cached re-run "
          f"{second.summary['seconds']:.2f} s, ratio {ratio:.1f}x")

    # The output is a dataset version: manifest with lineage, mountable, loadable with numpy.
    manifest_doc = json.loads(client.get_object(
        Bucket="vision", Key="datasets/small/v1/train/.mlfs/manifest.json")["Body"].read())
    assert manifest_doc["metadata"]["lineage"] == {
        "inputs": [{"uri": src, "name": "raw", "version": "v1"}],
        "pipeline": {"name": "small-32", "digest": first.summary["pipeline"]},
    }
    assert (manifest_doc["name"], manifest_doc["version"]) == ("small", "v1")
    assert len(manifest_doc["files"]) == N_IMAGES
    manifest = tmp_path / "out.json"
    manifest.write_text(json.dumps(manifest_doc))
    with mounted(manifest, tmp_path / "mnt", env, "--cache", tmp_path / "own-cache") as mp:
        for i in (0, 1, 977, N_IMAGES - 1):
            arr = np.load(mp / f"img-{i:04d}.npy", allow_pickle=False)
            assert arr.shape == (3, 32, 32) and arr.dtype == np.float32
            # A resize promises ±1 of Pillow's 8-bit output (the runner resizes only the
            # pixels the crop keeps): one level, normalised, is 1 / 255 / std.
            assert np.abs(arr - _reference(images[f"datasets/raw/v1/img-{i:04d}.jpg"])).max() <= ONE_LEVEL, \
                f"img-{i:04d}.npy read through the mount differs from the numpy reference by more than one level"

    # One changed input: exactly one result is computed.
    client.put_object(Bucket="vision", Key="datasets/raw/v1/img-0500.jpg", Body=jpeg(10_000))
    third = preprocess_run(env, pipeline, src, "--out", dst, "--workers", "2")
    assert counts(third.summary) == {"done": 1, "cached": N_IMAGES - 1, "failed": 0, "decoded": 1}
    changed = np.load(io.BytesIO(client.get_object(
        Bucket="vision", Key="datasets/small/v1/train/img-0500.npy")["Body"].read()))
    assert np.abs(changed - _reference(jpeg(10_000))).max() <= ONE_LEVEL, "the changed input's result was not replaced"

    # One changed parameter: every result is computed again.
    fourth = preprocess_run(env, pipeline, src, "--out", dst, "--workers", "2", "--set", "resize.size=40")
    assert counts(fourth.summary) == {"done": N_IMAGES, "cached": 0, "failed": 0, "decoded": N_IMAGES}
    assert fourth.summary["pipeline"] != first.summary["pipeline"]


def test_safetensors_shards_mount_and_load(gateway: GatewayServer, tmp_path: Path) -> None:
    require_fuse()
    client = gateway.client()
    client.create_bucket(Bucket="shards")
    images = {f"datasets/few/v3/cat-{i:02d}.jpg": jpeg(500 + i, size=(40, 50)) for i in range(40)}
    upload(client, "shards", images)
    env = gateway.env()
    result = preprocess_run(env, "resnet-train-augment", "s3://shards/datasets/few/v3/",
                            "--out", "s3://shards/datasets/few-aug/v1/", "--workers", "2",
                            "--set", "augment.ops=[{random_resized_crop: {size: 24}}, hflip]",
                            "--set", "arrays.shard_size=16")
    assert result.returncode == 0, result.stderr
    assert counts(result.summary) == {"done": 40, "cached": 0, "failed": 0, "decoded": 40}
    manifest = tmp_path / "shards.json"
    manifest.write_bytes(client.get_object(Bucket="shards", Key="datasets/few-aug/v1/.mlfs/manifest.json")["Body"].read())
    with mounted(manifest, tmp_path / "mnt", env, "--cache", tmp_path / "own-cache") as mp:
        index = json.loads((mp / "index.json").read_text())
        assert [s["samples"] for s in index["shards"]] == [16, 16, 8]
        loaded: dict[str, np.ndarray] = {}
        for shard in index["shards"]:
            loaded.update(load_file(str(mp / shard["file"])))
    assert sorted(loaded) == sorted(index["samples"]) == [f"cat-{i:02d}.npy" for i in range(40)]
    assert all(a.shape == (3, 24, 24) and a.dtype == np.float32 for a in loaded.values())
    assert len({a.tobytes() for a in loaded.values()}) == 40, "every sample must be its own image"


def test_source_inside_an_mlfs_mount_to_a_local_directory(gateway: GatewayServer, tmp_path: Path) -> None:
    require_fuse()
    client = gateway.client()
    client.create_bucket(Bucket="mounted")
    images = {f"datasets/pets/v2/{i:02d}.jpg": jpeg(900 + i, size=(300, 200)) for i in range(10)}
    upload(client, "mounted", images)
    env = gateway.env()
    manifest = tmp_path / "pets.json"
    mlfs("generate", "s3://mounted/datasets/pets/v2/", "-o", manifest, "-q", env=env)
    out, cache = tmp_path / "thumbs", tmp_path / "cache"
    with mounted(manifest, tmp_path / "mnt", env, "--cache", tmp_path / "mount-cache") as mp:
        first = preprocess_run(env, "thumbnail-webp", mp, "--out", out, "--cache", cache)
        again = preprocess_run(env, "thumbnail-webp", mp, "--out", out, "--cache", cache)
    assert counts(first.summary) == {"done": 10, "cached": 0, "failed": 0, "decoded": 10}, first.stderr
    assert counts(again.summary) == {"done": 0, "cached": 10, "failed": 0, "decoded": 0}, again.stderr
    for i in range(10):
        thumb = Image.open(out / f"{i:02d}.webp")
        assert (thumb.format, thumb.size) == ("WEBP", (256, 170)), f"{i:02d}.webp"
    lineage = json.loads((out / ".mlfs" / "lineage.json").read_text())
    assert lineage["metadata"]["lineage"]["pipeline"]["name"] == "thumbnail-webp"
