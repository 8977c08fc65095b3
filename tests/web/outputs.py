"""Outputs for the gallery tests without a ComfyUI: real PNG files written into a project's
instance output/ folder, with the `prompt` text chunk ComfyUI's SaveImage writes, then
recorded by `POST /api/projects/{id}/outputs/sync` (which scans the folder)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from tests.outputs.graphs import txt2img
from tests.web.browser import Hub

# Colour pairs for the thumbnails: each picture is a diagonal blend with a disc on top.
PALETTE = [
    ((255, 94, 98), (255, 195, 113)),
    ((67, 206, 162), (24, 90, 157)),
    ((142, 45, 226), (74, 0, 224)),
    ((247, 151, 30), (255, 210, 0)),
    ((0, 180, 219), (0, 131, 176)),
    ((252, 70, 107), (63, 94, 251)),
    ((17, 153, 142), (56, 239, 125)),
    ((238, 9, 121), (255, 106, 0)),
]


def graph(prompt: str, negative: str, seed: int, steps: int = 20, cfg: float = 7.0, sampler: str = "euler") -> dict:
    """An API-format graph as ComfyUI saves it: checkpoint → two text encoders → KSampler."""
    return txt2img(prompt, negative, seed, steps, cfg, sampler, scheduler="karras")


def picture(index: int, size: int = 384) -> Image.Image:
    first, second = PALETTE[index % len(PALETTE)]
    mask = Image.linear_gradient("L").rotate(45 * (index % 4), expand=False).resize((size, size))
    image = Image.composite(Image.new("RGB", (size, size), first), Image.new("RGB", (size, size), second), mask)
    draw = ImageDraw.Draw(image)
    r = size // 4 + (index * 13) % (size // 6)
    cx, cy = size // 2 + (index * 37) % (size // 4) - size // 8, size // 2
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(255 - c // 3 for c in first))
    return image


def output_dir(hub: Hub, user_id: int, project_id: int) -> Path:
    folder = hub.settings.instance_dir(user_id, project_id) / "output"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_png(folder: Path, name: str, index: int, prompt: str, seed: int, age: float = 0.0, size: int = 384) -> Path:
    """A PNG with ComfyUI's `prompt` chunk; `age` seconds old (the gallery sorts by mtime)."""
    info = PngInfo()
    info.add_text("prompt", json.dumps(graph(prompt, "模糊, 低质量", seed)))
    path = folder / name
    picture(index, size).save(path, pnginfo=info)
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def write_file(folder: Path, name: str, data: bytes, age: float = 0.0) -> Path:
    path = folder / name
    path.write_bytes(data)
    when = time.time() - age
    os.utime(path, (when, when))
    return path


async def user_id(api: httpx.AsyncClient) -> int:
    return (await api.get("/api/auth/me")).json()["data"]["id"]


async def sync(api: httpx.AsyncClient, project_id: int) -> int:
    r = await api.post(f"/api/projects/{project_id}/outputs/sync")
    assert r.status_code == 200, r.text
    return r.json()["data"]["new"]


async def outputs(api: httpx.AsyncClient, project_id: int, **params) -> dict:
    r = await api.get(f"/api/projects/{project_id}/outputs", params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    return r.json()["data"]


async def by_name(api: httpx.AsyncClient, project_id: int) -> dict[str, dict]:
    return {item["filename"]: item for item in (await outputs(api, project_id))["items"]}
