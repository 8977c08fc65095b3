"""What an API-format ComfyUI graph says about the image it made.

A graph maps node ids to `{"class_type": ..., "inputs": {...}}`; an input is a value
or a link `[node_id, output_index]`. The sampler node carries seed, steps, cfg and
sampler; its `positive`/`negative` links lead (through conditioning nodes) to the text
encoders; the model link leads to the checkpoint loader. Graphs come from users and
custom nodes, so nothing here trusts their shape: anything odd yields empty fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Sampler nodes, core and common: their inputs name the parameters users filter by.
_SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
_MODEL_INPUTS = ("ckpt_name", "unet_name", "model_name")
_TEXT_INPUTS = ("text", "text_g", "text_l", "prompt")
# How far to follow links from a sampler to a text: conditioning chains are short.
_MAX_DEPTH = 12


@dataclass
class Params:
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str = ""
    scheduler: str = ""
    model: str = ""
    loras: list[str] = field(default_factory=list)


def params_of(graph) -> Params:
    """The parameters of a graph; empty fields where the graph does not say."""
    out = Params()
    if not isinstance(graph, dict):
        return out
    sampler_id = _first_sampler(graph)
    if sampler_id is not None:
        inputs = _inputs(graph, sampler_id)
        out.seed = _int(_value(graph, inputs.get("seed", inputs.get("noise_seed"))))
        out.steps = _int(_value(graph, inputs.get("steps")))
        out.cfg = _float(_value(graph, inputs.get("cfg")))
        out.sampler = _str(_value(graph, inputs.get("sampler_name")))
        out.scheduler = _str(_value(graph, inputs.get("scheduler")))
        out.prompt = _text_behind(graph, inputs.get("positive"))
        out.negative_prompt = _text_behind(graph, inputs.get("negative"))
    if not out.prompt:
        # No sampler (or an exotic one): the graph's text encoders, in id order.
        out.prompt = "\n".join(t for t in (_own_text(graph, n) for n in _sorted_ids(graph)) if t)
    for node_id in _sorted_ids(graph):
        inputs = _inputs(graph, node_id)
        for name in _MODEL_INPUTS:
            if not out.model and isinstance(inputs.get(name), str):
                out.model = inputs[name]
        if isinstance(inputs.get("lora_name"), str):
            out.loras.append(inputs["lora_name"])
    return out


def _sorted_ids(graph: dict) -> list[str]:
    return sorted(graph, key=lambda k: (len(str(k)), str(k)))


def _inputs(graph: dict, node_id) -> dict:
    node = graph.get(str(node_id))
    inputs = node.get("inputs") if isinstance(node, dict) else None
    return inputs if isinstance(inputs, dict) else {}


def _class(graph: dict, node_id) -> str:
    node = graph.get(str(node_id))
    return str(node.get("class_type", "")) if isinstance(node, dict) else ""


def _first_sampler(graph: dict):
    for node_id in _sorted_ids(graph):
        if _class(graph, node_id) in _SAMPLERS:
            return node_id
    for node_id in _sorted_ids(graph):  # custom samplers: anything with a seed and steps
        inputs = _inputs(graph, node_id)
        if ("seed" in inputs or "noise_seed" in inputs) and "steps" in inputs:
            return node_id
    return None


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _value(graph: dict, value, depth: int = 0):
    """A plain value, following a link to a primitive node that holds it."""
    if not _is_link(value) or depth > _MAX_DEPTH:
        return value
    inputs = _inputs(graph, value[0])
    for name in ("value", "seed", "int", "float", "string", "text"):
        if name in inputs:
            return _value(graph, inputs[name], depth + 1)
    return None


def _own_text(graph: dict, node_id) -> str:
    inputs = _inputs(graph, node_id)
    texts = [_value(graph, inputs.get(name)) for name in _TEXT_INPUTS]
    return "\n".join(t for t in texts if isinstance(t, str) and t)


def _text_behind(graph: dict, link, depth: int = 0) -> str:
    """The text of the encoder a conditioning link leads to (breadth of one chain)."""
    if not _is_link(link) or depth > _MAX_DEPTH:
        return ""
    node_id = link[0]
    text = _own_text(graph, node_id)
    if text:
        return text
    for name, value in _inputs(graph, node_id).items():
        if name in ("conditioning", "conditioning_1", "positive", "cond") or name.startswith("conditioning"):
            found = _text_behind(graph, value, depth + 1)
            if found:
                return found
    return ""


def _int(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    value = int(value)
    # Kept in a signed 64-bit column; ComfyUI allows seeds up to 2**64-1.
    return value if -(2**63) <= value < 2**63 else None


def _float(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _str(value) -> str:
    return value if isinstance(value, str) else ""
