"""API-format graphs and PNGs like ComfyUI's, for the outputs tests."""

from __future__ import annotations

import json
from pathlib import Path


def txt2img(
    text: str = "a red fox",
    negative: str = "blurry",
    seed: int = 42,
    steps: int = 20,
    cfg: float = 7.5,
    sampler: str = "euler",
    scheduler: str = "normal",
) -> dict:
    """The default text-to-image workflow, as ComfyUI's "Export (API)" writes it."""
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": sampler,
                "scheduler": scheduler,
                "denoise": 1,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


def write_png(path: Path, graph: dict | None = None, size: tuple[int, int] = (16, 12), colour=(200, 30, 30)) -> Path:
    """A PNG as SaveImage writes it: the API graph in a `prompt` tEXt chunk."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    if graph is not None:
        info.add_text("prompt", json.dumps(graph))
        info.add_text("workflow", json.dumps({"nodes": [], "links": []}))
    Image.new("RGB", size, colour).save(path, pnginfo=info)
    return path
