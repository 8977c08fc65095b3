"""The store: a file that names its prompt is tied to it, and that prompt's history entry,
if it turns up later, completes the record instead of doubling it."""

import json

from sqlalchemy import select

from comfyhub.models import Generation, Output, Project, User
from comfyhub.outputs.history import FileRef, Finished
from comfyhub.outputs.media import file_facts
from comfyhub.outputs.store import FoundFile, OutputStore
from tests.outputs.graphs import txt2img


def png_with_chunk(path, prompt_id):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("prompt", json.dumps(txt2img("from a job")))
    info.add_text("comfyhub", json.dumps({"job": 1, "item": 0, "prompt_id": prompt_id}))
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return path


async def test_a_file_naming_its_prompt_is_tied_to_it_and_completed_by_its_history(app, tmp_path):
    sessions = app.state.sessions
    async with sessions() as db:
        user = User(username="u", password_hash="x")
        db.add(user)
        await db.flush()
        project = Project(name="p", code="P", owner_user_id=user.id)
        db.add(project)
        await db.commit()
    store = OutputStore(sessions)
    a, b = png_with_chunk(tmp_path / "a.png", "p-1"), png_with_chunk(tmp_path / "b.png", "p-1")
    found = [FoundFile(FileRef("", p.name, ""), file_facts(p)) for p in (a, b)]
    assert await store.record_files(project.id, user.id, found) == 2
    async with sessions() as db:
        (gen,) = (await db.execute(select(Generation))).scalars().all()  # one prompt, two files
        assert (gen.prompt_id, gen.source) == ("p-1", "file")
    assert await store.known_prompts(project.id, ["p-1"]) == set()  # not complete yet
    finished = Finished(
        prompt_id="p-1",
        status="success",
        files=[FileRef("9", "a.png", ""), FileRef("9", "b.png", ""), FileRef("9", "c.png", "")],
    )
    assert await store.record_finished(project.id, user.id, [finished], {}) == 0  # not a new prompt
    async with sessions() as db:
        (gen,) = (await db.execute(select(Generation))).scalars().all()
        assert gen.source == "history"
        outputs = (await db.execute(select(Output.filename, Output.generation_id))).all()
    assert sorted(outputs) == [("a.png", gen.id), ("b.png", gen.id), ("c.png", gen.id)]
    assert await store.known_prompts(project.id, ["p-1"]) == {"p-1"}
