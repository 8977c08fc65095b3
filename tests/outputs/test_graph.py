"""What a graph says: the parameters copied onto each output."""

from comfyhub.outputs.graph import params_of
from tests.outputs.graphs import txt2img


def test_the_default_workflow_gives_every_parameter():
    p = params_of(txt2img("a red fox", "blurry", seed=7, steps=30))
    assert (p.prompt, p.negative_prompt) == ("a red fox", "blurry")
    assert (p.seed, p.steps, p.cfg, p.sampler, p.scheduler) == (7, 30, 7.5, "euler", "normal")
    assert p.model == "sd_xl_base_1.0.safetensors"


def test_values_behind_primitive_nodes_and_conditioning_chains_are_followed():
    g = txt2img()
    g["3"]["inputs"]["seed"] = ["20", 0]
    g["20"] = {"class_type": "PrimitiveInt", "inputs": {"value": 123}}
    g["3"]["inputs"]["positive"] = ["21", 0]
    g["21"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["7", 0]}}
    p = params_of(g)
    assert p.seed == 123 and p.prompt == "a red fox"


def test_a_graph_without_sampler_still_gives_its_texts_and_odd_graphs_give_nothing():
    g = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "hello"}}, "2": {"class_type": "SaveImage"}}
    assert params_of(g).prompt == "hello"
    for odd in (
        None,
        [],
        "x",
        {"1": "node"},
        {"1": {"inputs": ["not", "a", "dict"]}},
        {"3": {"inputs": {"seed": "x", "steps": 2}}},
    ):
        p = params_of(odd)
        assert p.seed is None and p.prompt == ""


def test_a_seed_beyond_64_bit_signed_is_left_out_not_crashing_the_column():
    assert params_of(txt2img(seed=2**64 - 1)).seed is None
    assert params_of(txt2img(seed=2**63 - 1)).seed == 2**63 - 1
