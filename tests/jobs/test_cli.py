"""`comfyhub jobs submit|watch`, run as a user would: a subprocess talking HTTP to a live
`comfyhub serve` (with the fake ComfyUI) as the owner of a personal access token.

One server for the module: each costs seconds to start.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from comfyhub.remote import RemoteError, exit_code, read_params, summary
from tests.support.comfy import kill_instances
from tests.support.hub import LiveHub, create_project
from tests.support.net import free_port

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "job"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
}


class Hub:
    """The live server, alice's project and her access token."""

    def __init__(self, server: LiveHub, pid: int, token: str, token_id: int, files: Path):
        self.server, self.pid, self.token, self.token_id, self.files = server, pid, token, token_id, files
        self.workflow = files / "workflow.json"
        self.workflow.write_text(json.dumps(WORKFLOW))

    def env(self, token: str | None = None) -> dict[str, str]:
        return {"COMFYHUB_URL": self.server.url, "COMFYHUB_TOKEN": self.token if token is None else token}

    def csv(self, name: str, text: str) -> Path:
        path = self.files / name
        path.write_text(text, encoding="utf-8")
        return path

    def job(self, jid: int) -> dict:
        with self.server.client("alice") as c:
            return c.get(f"/api/projects/{self.pid}/jobs/{jid}").json()["data"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs-cli")
    server = LiveHub(root / "hub")
    server.start()
    try:
        server.add_user("alice")
        server.add_user("bob")
        with server.client("alice") as c:
            pid = create_project(c, "CLI")
            uid = c.get("/api/auth/me").json()["data"]["id"]
            base = server.instance_dir(uid, pid)
            base.mkdir(parents=True, exist_ok=True)
            (base / "fake_comfyui.json").write_text(json.dumps({"job_seconds": 0.05}))
            r = c.post("/api/tokens", json={"name": "ci", "expires_days": 1})
            assert r.status_code == 201, r.text
            token = r.json()["data"]
        yield Hub(server, pid, token["token"], token["id"], root)
    finally:
        server.stop()
        kill_instances(root)  # the serve leaves its instances running, by design


def comfyhub(*args, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMFYHUB_")}
    return subprocess.run(
        [sys.executable, "-m", "comfyhub.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=timeout,
    )


def created_job(stdout: str) -> int:
    m = re.search(r"created job (\d+) in project \d+: (\d+) items", stdout)
    assert m, stdout
    return int(m.group(1))


def test_submit_and_watch_a_csv_job_to_done(hub):
    params = hub.csv("params.csv", '6.text,1.color\n一只猫,1\na dog,2\n"a, bird",3\n')
    r = comfyhub(
        "jobs", "submit", hub.pid, hub.workflow, params, "--name", "冒烟", "--watch", "--interval", "0.2", env=hub.env()
    )
    assert r.returncode == 0, r.stdout + r.stderr
    jid = created_job(r.stdout)
    assert f"job {jid} done: 3 done, 0 failed of 3" in r.stdout
    view = hub.job(jid)
    assert view["name"] == "冒烟" and view["counts"]["done"] == 3
    with hub.server.client("alice") as c:
        items = c.get(f"/api/projects/{hub.pid}/jobs/{jid}/items").json()["data"]["items"]
    assert [i["params"] for i in items] == [
        {"6.text": "一只猫", "1.color": 1},
        {"6.text": "a dog", "1.color": 2},
        {"6.text": "a, bird", "1.color": 3},
    ]
    # watching a job that has ended answers at once, with the same exit code
    r = comfyhub("jobs", "watch", jid, env=hub.env())
    assert r.returncode == 0 and f"job {jid} done: 3 done, 0 failed of 3" in r.stdout, r.stdout + r.stderr


def test_job_by_id_route_is_the_owners_view_only(hub):
    r = comfyhub("jobs", "submit", hub.pid, hub.workflow, "--repeat", "2", "--seed-field", "1.color", env=hub.env())
    assert r.returncode == 0, r.stderr
    assert "comfyhub jobs watch" in r.stdout
    jid = created_job(r.stdout)
    with hub.server.client("alice") as c:
        mine = c.get(f"/api/jobs/{jid}")
        assert mine.status_code == 200
        assert mine.json()["data"]["id"] == jid and mine.json()["data"]["project_id"] == hub.pid
        assert mine.json()["data"]["total"] == 2 and mine.json()["data"]["columns"] == ["1.color"]
        assert c.get(f"/api/jobs/{jid + 1000}").json()["msg"] == "任务不存在"
    with hub.server.client("bob") as c:
        theirs = c.get(f"/api/jobs/{jid}")
        assert theirs.status_code == 404 and theirs.json()["msg"] == "任务不存在"


def test_a_bad_cell_is_refused_with_the_servers_message(hub):
    params = hub.csv("bad.csv", "6.text,1.color\na cat,1\na dog,red\n")
    r = comfyhub("jobs", "submit", hub.pid, hub.workflow, params, env=hub.env())
    assert r.returncode == 2
    assert "第 3 行“1.color”：应为整数，实际是“red”" in r.stderr
    assert "created job" not in r.stdout
    # a parameters file the command cannot read is refused before any request
    r = comfyhub("jobs", "submit", hub.pid, hub.workflow, hub.csv("params.txt", "x"), env=hub.env())
    assert r.returncode == 2 and ".csv, .jsonl or .json" in r.stderr


def test_watch_exit_codes_for_failed_items_and_a_cancelled_job(hub):
    params = hub.csv("fails.csv", "6.text,1.color\nfine,1\nFAKE_FAIL here,2\n")
    r = comfyhub(
        "jobs",
        "submit",
        hub.pid,
        hub.workflow,
        params,
        "--max-retries",
        "0",
        "--watch",
        "--interval",
        "0.2",
        env=hub.env(),
    )
    assert r.returncode == 3, r.stdout + r.stderr
    assert "1 done, 1 failed of 2" in r.stdout and "items?state=failed" in r.stdout

    r = comfyhub("jobs", "submit", hub.pid, hub.workflow, "--repeat", "500", env=hub.env())
    jid = created_job(r.stdout)
    with hub.server.client("alice") as c:
        assert c.post(f"/api/projects/{hub.pid}/jobs/{jid}/cancel").status_code == 200
    r = comfyhub("jobs", "watch", jid, env=hub.env())
    assert r.returncode == 4 and f"job {jid} cancelled" in r.stdout, r.stdout + r.stderr


def test_ctrl_c_stops_watching_and_the_job_goes_on(hub):
    r = comfyhub("jobs", "submit", hub.pid, hub.workflow, "--repeat", "400", env=hub.env())
    jid = created_job(r.stdout)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMFYHUB_")}
    watch = subprocess.Popen(
        [sys.executable, "-m", "comfyhub.cli", "jobs", "watch", str(jid), "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**clean, **hub.env()},
    )
    try:
        first = watch.stderr.readline()  # a progress line: it is watching
        assert first.startswith(f"job {jid} "), first
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 130, out + err
    assert f"stopped watching job {jid}; it goes on" in out
    assert hub.job(jid)["state"] in ("queued", "running")
    with hub.server.client("alice") as c:
        c.post(f"/api/projects/{hub.pid}/jobs/{jid}/cancel")


def test_no_token_a_revoked_token_and_no_server(hub):
    r = comfyhub("jobs", "watch", "1", env={"COMFYHUB_URL": hub.server.url})
    assert r.returncode == 2 and "COMFYHUB_TOKEN is not set" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    with hub.server.client("alice") as c:
        r = c.post("/api/tokens", json={"name": "old", "expires_days": 1})
        old = r.json()["data"]
        assert c.delete(f"/api/tokens/{old['id']}").status_code == 200
    r = comfyhub("jobs", "submit", hub.pid, hub.workflow, hub.csv("ok.csv", "6.text\nx\n"), env=hub.env(old["token"]))
    assert r.returncode == 2
    assert "refused COMFYHUB_TOKEN (401 未登录或登录已过期)" in r.stderr and "revoked" in r.stderr

    r = comfyhub("jobs", "watch", "1", env={"COMFYHUB_URL": f"http://127.0.0.1:{free_port()}", "COMFYHUB_TOKEN": "x"})
    assert r.returncode == 1 and "cannot reach comfyhub at http://127.0.0.1:" in r.stderr


# --- without a server: the parameters file and the ending --------------------------------------


def test_the_parameters_file_is_sent_by_its_kind(tmp_path):
    (tmp_path / "p.csv").write_bytes("\ufeff6.text\n猫\n".encode())
    assert read_params(tmp_path / "p.csv") == {"csv": "6.text\n猫\n"}
    (tmp_path / "p.jsonl").write_text('{"6.text": "a"}\n')
    assert read_params(tmp_path / "p.jsonl") == {"jsonl": '{"6.text": "a"}\n'}
    (tmp_path / "rows.json").write_text('[{"6.text": "a"}]')
    assert read_params(tmp_path / "rows.json") == {"table": [{"6.text": "a"}]}
    (tmp_path / "grid.json").write_text('{"grid": {"6.text": ["a", "b"]}}')
    assert read_params(tmp_path / "grid.json") == {"grid": {"6.text": ["a", "b"]}}
    for name, text, why in [
        ("other.json", '{"rows": []}', '{"grid": {...}}'),
        ("broken.json", "[1,", "not valid JSON"),
        ("latin.csv", None, "not UTF-8"),
        ("missing.csv", "", "cannot read"),
    ]:
        path = tmp_path / name
        if text is None:
            path.write_bytes(b"6.text\n\xe9t\xe9\n")
        elif name != "missing.csv":
            path.write_text(text)
        with pytest.raises(RemoteError) as caught:
            read_params(path)
        assert why in caught.value.message and caught.value.exit_code == 2


def test_exit_code_and_summary_of_an_ended_job():
    view = {
        "id": 7,
        "project_id": 2,
        "state": "done",
        "detail": "",
        "total": 3,
        "counts": {"pending": 0, "running": 0, "done": 3, "failed": 0, "cancelled": 0},
        "created_at": "2026-01-01T10:00:00+00:00",
        "started_at": "2026-01-01T10:00:01+00:00",
        "finished_at": "2026-01-01T10:01:31+00:00",
    }
    assert exit_code(view) == 0
    assert summary(view) == "job 7 done: 3 done, 0 failed of 3 in 0:01:30"
    assert exit_code({**view, "counts": {**view["counts"], "done": 2, "failed": 1}}) == 3
    assert exit_code({**view, "state": "failed"}) == 4
    assert exit_code({**view, "state": "cancelled"}) == 4
