"""A newcomer's first minutes, as the README tells them: the first password and the curl
login, run word for word against a live `comfyhub serve`."""

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.server import LiveServer, initial_admin_password

README = Path(__file__).resolve().parents[1] / "README.md"
README_HUB = "HUB=http://127.0.0.1:8000"


def readme_curl_snippet() -> str:
    """The README's curl walkthrough: the bash block that logs in."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    [snippet] = [b for b in blocks if "/api/auth/login" in b]
    assert snippet.count(README_HUB) == 1, "the README's curl block no longer sets HUB: update this test"
    return snippet


def run_snippet(server: LiveServer, cwd: Path) -> subprocess.CompletedProcess:
    script = readme_curl_snippet().replace(README_HUB, f"HUB={server.url}")
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("first-run")
    with LiveServer(workdir) as server:
        yield server


def test_initial_password_file_holds_the_password_alone(first_run):
    keep = first_run.workdir / "runtime" / "initial_admin_password"
    text = keep.read_text()
    password = text.removesuffix("\n")
    assert text == password + "\n" and " " not in password and password
    assert keep.stat().st_mode & 0o777 == 0o600
    assert f"password: {password}" in first_run.output()
    assert f"comfyhub: settings read from the environment and the defaults (no .env in {first_run.workdir})" in (
        first_run.output()
    )
    first_run.login("admin", password)  # exactly what the file holds logs in


def test_readme_login_snippet_works_with_the_kept_password(first_run):
    r = run_snippet(first_run, first_run.workdir)
    assert r.returncode == 0, r.stderr
    assert '"code":201' in r.stdout and "DEMO-1" in r.stdout
    headers = first_run.login("admin", initial_admin_password(first_run.workdir))
    codes = [p["code"] for p in httpx.get(first_run.url + "/api/projects", headers=headers).json()["data"]]
    assert codes == ["DEMO-1"]
    assert r.stdout.count("\n") == 2  # each reply on a line of its own

    again = run_snippet(first_run, first_run.workdir)  # the same code twice: refused, and it says so
    assert again.returncode != 0 and "项目号已存在" in again.stdout
    assert again.stdout.count('"code":200') == 0  # the listing did not run after the refusal


def test_readme_login_snippet_fails_readably_and_runs_nothing_more(first_run, tmp_path):
    # What a newcomer once had: the whole line `admin <password>` taken for the password.
    password = initial_admin_password(first_run.workdir)
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "initial_admin_password").write_text(f"admin {password}\n")
    r = run_snippet(first_run, tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip() == "login failed: 用户名或密码错误", r.stderr
    assert r.stdout == ""  # the project curls did not run with an empty token


def test_readme_login_snippet_says_when_nothing_answers(first_run, tmp_path):
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "initial_admin_password").write_text("whatever\n")
    gone = LiveServer(tmp_path)  # never started: nothing listens on its port
    r = run_snippet(gone, tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "login failed: no answer from comfyhub" in r.stderr and r.stdout == ""
