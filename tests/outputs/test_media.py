"""A PNG's own metadata and size, read without decoding it."""

import json

from comfyhub.outputs.media import file_facts, media_type
from tests.outputs.graphs import txt2img, write_png


def test_png_text_chunks_and_size_are_read(tmp_path):
    path = write_png(tmp_path / "a.png", txt2img("猫", seed=5), size=(640, 480))
    facts = file_facts(path)
    assert (facts.width, facts.height) == (640, 480)
    assert facts.graph["6"]["inputs"]["text"] == "猫" and facts.size == path.stat().st_size


def test_itxt_and_bad_metadata_and_other_kinds(tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("prompt", json.dumps({"1": {"class_type": "X"}}), zip=True)
    Image.new("RGB", (3, 2)).save(tmp_path / "i.png", pnginfo=info)
    assert file_facts(tmp_path / "i.png").graph == {"1": {"class_type": "X"}}
    bad = PngInfo()
    bad.add_text("prompt", "{not json")
    Image.new("RGB", (3, 2)).save(tmp_path / "b.png", pnginfo=bad)
    assert file_facts(tmp_path / "b.png").graph is None
    Image.new("RGB", (7, 9)).save(tmp_path / "c.webp")
    assert (file_facts(tmp_path / "c.webp").width, file_facts(tmp_path / "c.webp").height) == (7, 9)
    (tmp_path / "v.mp4").write_bytes(b"\0" * 10)
    assert file_facts(tmp_path / "v.mp4").size == 10
    assert [media_type(n) for n in ("a.PNG", "b.mp4", "c.flac", "d.safetensors")] == [
        "image",
        "video",
        "audio",
        "other",
    ]
