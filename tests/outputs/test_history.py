"""ComfyUI's /history entries (shapes measured on ComfyUI 0.3.64) read into records."""

from comfyhub.outputs.history import parse_history


def entry(pid, number, status="success", messages=None, outputs=None, graph=None):
    return {
        "prompt": [number, pid, graph or {"1": {"class_type": "EmptyImage", "inputs": {}}}, {"client_id": "x"}, ["2"]],
        "outputs": outputs
        if outputs is not None
        else {"2": {"images": [{"filename": f"{pid}.png", "subfolder": "", "type": "output"}]}},
        "status": {"status_str": status, "completed": status == "success", "messages": messages or []},
        "meta": {},
    }


def test_success_error_and_interrupt_are_told_apart_by_their_messages():
    ok = entry("a", 0, messages=[["execution_start", {"timestamp": 1000}], ["execution_success", {"timestamp": 3500}]])
    err = entry(
        "b",
        1,
        "error",
        [
            [
                "execution_error",
                {
                    "node_id": "2",
                    "node_type": "SaveImage",
                    "exception_type": "Exception",
                    "exception_message": "boom",
                    "timestamp": 5,
                },
            ]
        ],
    )
    # ComfyUI reports an interrupt as status "error" too; only the message says which.
    stop = entry("c", 2, "error", [["execution_interrupted", {"node_id": "2", "timestamp": 9}]], outputs={})
    a, b, c = parse_history({"a": ok, "b": err, "c": stop})
    assert a.status == "success" and (a.finished_at - a.started_at).total_seconds() == 2.5
    assert b.status == "error" and "boom" in b.error and "SaveImage" in b.error and b.files  # partial outputs kept
    assert c.status == "interrupted" and c.files == []


def test_files_keep_only_outputs_with_safe_names():
    outputs = {
        "9": {
            "images": [
                {"filename": "ok.png", "subfolder": "sub/dir", "type": "output"},
                {"filename": "preview.png", "subfolder": "", "type": "temp"},
                {"filename": "../escape.png", "subfolder": "", "type": "output"},
                {"filename": "x.png", "subfolder": "../..", "type": "output"},
                {"filename": "y.png", "subfolder": "/etc", "type": "output"},
                "not a dict",
            ],
            "animated": [False],
        },
        "10": {"gifs": [{"filename": "clip.mp4", "subfolder": "", "type": "output"}]},
    }
    (f,) = parse_history({"p": entry("p", 0, outputs=outputs)})
    assert [(r.node_id, r.subfolder, r.filename) for r in f.files] == [
        ("9", "sub/dir", "ok.png"),
        ("10", "", "clip.mp4"),
    ]


def test_malformed_entries_are_skipped():
    answer = {"good": entry("good", 0), "bad": "x", "": entry("", 1), "x" * 65: entry("long", 2), "odd": {"prompt": 5}}
    assert [f.prompt_id for f in parse_history(answer)] == ["good", "odd"]
    assert parse_history(["not", "a", "dict"]) == []
