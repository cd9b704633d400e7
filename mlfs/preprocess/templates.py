"""Built-in pipeline templates; a document may start from one and override parameters."""

from __future__ import annotations

from typing import Any

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

TEMPLATES: dict[str, dict[str, Any]] = {
    "imagenet-224": {
        "description": "decode RGB, shorter side 256 (bilinear), center crop 224, ImageNet mean/std, CHW float32 .npy",
        "steps": [
            {"decode": {"mode": "RGB"}},
            {"resize": {"size": 256, "mode": "shorter", "filter": "bilinear"}},
            {"center_crop": {"size": 224}},
            {"normalize": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}},
            {"to_layout": {"layout": "CHW"}},
            {"arrays": {"format": "npy"}},
        ],
    },
    "clip-224": {
        "description": "decode RGB, shorter side 224 (bicubic), center crop 224, CLIP mean/std, CHW float32 .npy",
        "steps": [
            {"decode": {"mode": "RGB"}},
            {"resize": {"size": 224, "mode": "shorter", "filter": "bicubic"}},
            {"center_crop": {"size": 224}},
            {"normalize": {"mean": CLIP_MEAN, "std": CLIP_STD}},
            {"to_layout": {"layout": "CHW"}},
            {"arrays": {"format": "npy"}},
        ],
    },
    "resnet-train-augment": {
        "description": "decode RGB, random resized crop 224, horizontal flip, colour jitter, ImageNet mean/std, "
                       "CHW float32 in safetensors shards of 256",
        "seed": 0,
        "steps": [
            {"decode": {"mode": "RGB"}},
            {"augment": {"ops": [
                {"random_resized_crop": {"size": 224, "scale": [0.08, 1.0]}},
                {"hflip": {"p": 0.5}},
                {"color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}},
            ]}},
            {"normalize": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}},
            {"to_layout": {"layout": "CHW"}},
            {"arrays": {"format": "safetensors", "shard_size": 256}},
        ],
    },
    "thumbnail-webp": {
        "description": "decode RGB, fit within 256x256 (no padding: longer side 256, lanczos), WebP quality 80",
        "steps": [
            {"decode": {"mode": "RGB"}},
            {"resize": {"size": 256, "mode": "longer", "filter": "lanczos"}},
            {"encode": {"format": "webp", "quality": 80}},
        ],
    },
}
