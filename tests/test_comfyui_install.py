"""`comfyhub comfyui install` against a local git repository (no network)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from comfyhub.comfyui_install import update_env_file
from comfyhub.config import load_settings


def git(*args, cwd):
    subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        },
    )


@pytest.fixture
def comfy_repo(tmp_path) -> Path:
    """A tiny stand-in repository: main.py and a requirements file pip can satisfy offline."""
    repo = tmp_path / "upstream"
    repo.mkdir()
    (repo / "main.py").write_text("print('fake comfyui')\n")
    (repo / "requirements.txt").write_text("# nothing to download\n")
    git("init", "-q", "-b", "master", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "v1", cwd=repo)
    git("tag", "v1", cwd=repo)
    return repo


def install(workdir, *args, torch: str = "skip", env: dict | None = None):
    """`comfyhub comfyui install` in `workdir`, offline unless `env` says otherwise."""
    return subprocess.run(
        [sys.executable, "-m", "comfyhub.cli", "comfyui", "install", "--torch", torch, "--extra-packages", "", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        env=env or {**os.environ, "PIP_NO_INDEX": "1", "COLUMNS": "120"},
    )


def env_values(path: Path) -> dict:
    return dotenv_values(path)


def test_fresh_install_then_rerun_updates(tmp_path, comfy_repo):
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env").write_text("COMFYUI_PORT_RANGE=9100-9110\n")
    r = install(work, "--git-url", str(comfy_repo), "--ref", "v1")
    assert r.returncode == 0, r.stdout + r.stderr
    target = work / "runtime" / "ComfyUI"
    assert (target / "main.py").is_file()
    assert (target / "custom_nodes").is_dir() and (target / "models").is_dir()
    python = target / "venv" / "bin" / "python"
    assert python.exists()
    values = env_values(work / ".env")
    assert values == {
        "COMFYUI_PORT_RANGE": "9100-9110",
        "COMFYUI_REPO_PATH": str(target),
        "COMFYUI_PYTHON": str(python),
    }
    for step in ("[1/6]", "[2/6]", "[6/6]", "Start comfyhub with"):  # no torch here: not "ready"
        assert step in r.stdout

    # upstream moves on; a second run updates the checkout instead of failing
    (comfy_repo / "main.py").write_text("print('fake comfyui v2')\n")
    git("commit", "-q", "-am", "v2", cwd=comfy_repo)
    git("tag", "v2", cwd=comfy_repo)
    r = install(work, "--git-url", str(comfy_repo), "--ref", "v2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "v2" in (target / "main.py").read_text()
    assert "Virtual environment exists" in r.stdout
    assert env_values(work / ".env")["COMFYUI_PYTHON"] == str(python)

    # pinned to a tag, "run it again to update" without --ref says how to move on
    r = install(work, "--git-url", str(comfy_repo))
    assert r.returncode == 1 and "pinned to a tag" in r.stderr and "--ref" in r.stderr
    r = install(work, "--git-url", str(comfy_repo), "--ref", "master")
    assert r.returncode == 0, r.stdout + r.stderr
    (comfy_repo / "main.py").write_text("print('fake comfyui v3')\n")
    git("commit", "-q", "-am", "v3", cwd=comfy_repo)
    r = install(work, "--git-url", str(comfy_repo))  # on a branch now: a plain re-run pulls
    assert r.returncode == 0, r.stdout + r.stderr
    assert "v3" in (target / "main.py").read_text()

    # doctor now finds main.py and the interpreter
    doctor = subprocess.run(
        [sys.executable, "-m", "comfyhub.cli", "doctor"], cwd=work, capture_output=True, text=True, timeout=120
    )
    assert "ok    comfyui repo" in doctor.stdout and "ok    comfyui python" in doctor.stdout


def test_env_file_keeps_other_lines_and_round_trips_awkward_paths(tmp_path, monkeypatch):
    """Paths with spaces, `#` and quotes come back from load_settings exactly as written."""
    env = tmp_path / ".env"
    env.write_text("# my settings\nCOMFYUI_PORT_RANGE=9100-9110\n\n# ComfyUI\nCOMFYUI_PYTHON=/old/python\n")
    env.chmod(0o640)
    repo = tmp_path / "Comfy UI #2" / "it's here"
    python = repo / "venv" / "bin" / "python"
    update_env_file(env, {"COMFYUI_REPO_PATH": str(repo), "COMFYUI_PYTHON": str(python)})

    lines = env.read_text().splitlines()
    assert lines[:4] == ["# my settings", "COMFYUI_PORT_RANGE=9100-9110", "", "# ComfyUI"]
    assert lines[4].startswith("COMFYUI_PYTHON='") and lines[5].startswith("COMFYUI_REPO_PATH='")  # replaced in place
    assert len(lines) == 6
    assert env.stat().st_mode & 0o777 == 0o640
    monkeypatch.chdir(tmp_path)
    settings = load_settings(_env_file=env)
    assert settings.comfyui_repo_path == repo and settings.comfyui_python == python
    assert settings.port_range == (9100, 9110)


def test_env_file_behind_a_symlink_is_updated_where_it_points(tmp_path):
    shared = tmp_path / "shared.env"
    shared.write_text("COMFYUI_LISTEN=127.0.0.1\n")
    (tmp_path / ".env").symlink_to(shared)
    update_env_file(tmp_path / ".env", {"COMFYUI_REPO_PATH": "/opt/ComfyUI"})
    assert (tmp_path / ".env").is_symlink()
    assert dotenv_values(shared) == {"COMFYUI_LISTEN": "127.0.0.1", "COMFYUI_REPO_PATH": "/opt/ComfyUI"}


def test_broken_url_is_a_clear_error_and_leaves_nothing(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    r = install(work, "--git-url", str(tmp_path / "no-such-repo"))
    assert r.returncode == 1
    assert "git clone failed" in r.stderr and "COMFYUI_GIT_URL" in r.stderr
    assert not (work / "runtime" / "ComfyUI").exists()
    assert list((work / "runtime").iterdir()) == []  # no half-cloned leftovers
    assert not (work / ".env").exists()


def test_failed_clone_names_the_routes_without_github(tmp_path):
    """No GitHub from here: the message says how to go on without it — a mirror, or an
    existing ComfyUI named in this folder's .env."""
    work = tmp_path / "work"
    work.mkdir()
    r = install(work, "--git-url", str(tmp_path / "no-such-repo"))
    assert r.returncode == 1
    what_to_do = r.stderr.split("what to do:", 1)[1]
    assert "--git-url URL" in what_to_do
    assert "COMFYUI_REPO_PATH" in what_to_do and "COMFYUI_PYTHON" in what_to_do
    assert f"in {work / '.env'}" in what_to_do


def test_target_that_is_not_a_checkout_is_refused(tmp_path, comfy_repo):
    work = tmp_path / "work"
    (work / "runtime" / "ComfyUI").mkdir(parents=True)
    (work / "runtime" / "ComfyUI" / "precious.txt").write_text("keep me")
    r = install(work, "--git-url", str(comfy_repo))
    assert r.returncode == 1 and "not a git checkout" in r.stderr
    assert (work / "runtime" / "ComfyUI" / "precious.txt").read_text() == "keep me"


def test_repository_without_main_py_is_rejected(tmp_path):
    repo = tmp_path / "notcomfy"
    repo.mkdir()
    (repo / "README").write_text("x")
    git("init", "-q", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "x", cwd=repo)
    work = tmp_path / "work"
    work.mkdir()
    r = install(work, "--git-url", str(repo))
    assert r.returncode == 1 and "does not look like ComfyUI" in r.stderr
    assert not (work / "runtime" / "ComfyUI").exists()


def offline_pip_env(find_links: Path) -> dict:
    """pip with no index, no configuration files, and only `find_links` to install from."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {
        **env,
        "PIP_NO_INDEX": "1",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_FIND_LINKS": str(find_links),
        "COLUMNS": "120",
    }


def fake_wheel(folder: Path, name: str, version: str) -> None:
    """A minimal wheel with only its metadata: enough for pip to choose and install it."""
    import zipfile

    folder.mkdir(exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        for path, text in files.items():
            whl.writestr(path, text)


def test_requirements_keep_the_installed_torch(tmp_path, comfy_repo):
    """requirements.txt names torch: the upgrade must not swap the build installed before it (CPU or by hand)."""
    (comfy_repo / "requirements.txt").write_text("torch\n")
    git("commit", "-q", "-am", "needs torch", cwd=comfy_repo)
    wheels = tmp_path / "wheels"
    fake_wheel(wheels, "torch", "1.0")  # what the user installed by hand (stands for the CPU build)
    work = tmp_path / "work"
    work.mkdir()
    env = offline_pip_env(wheels)
    # first run: skip torch; requirements.txt then installs torch 1.0, the only one there is
    r = install(work, "--git-url", str(comfy_repo), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    python = work / "runtime" / "ComfyUI" / "venv" / "bin" / "python"
    version = [str(python), "-c", "import importlib.metadata as m; print(m.version('torch'))"]
    assert subprocess.run(version, capture_output=True, text=True).stdout.strip() == "1.0"

    fake_wheel(wheels, "torch", "2.0")  # a newer (say CUDA) build appears on the index
    r = install(work, "--git-url", str(comfy_repo), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert subprocess.run(version, capture_output=True, text=True).stdout.strip() == "1.0"
    assert "keeping torch 1.0" in r.stdout


def test_torch_download_failure_says_what_to_do(tmp_path, comfy_repo):
    """The CPU build's index out of reach (offline, a firewall): the error names --torch skip."""
    work = tmp_path / "work"
    work.mkdir()
    r = install(work, "--git-url", str(comfy_repo), torch="cpu", env=offline_pip_env(tmp_path / "none"))
    assert r.returncode == 1
    assert "pip install torch failed" in r.stderr
    assert "download.pytorch.org" in r.stderr and "--torch skip" in r.stderr
    python = work / "runtime" / "ComfyUI" / "venv" / "bin" / "python"
    assert f"{python} -m pip install torch torchvision torchaudio" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("  what to do: ")  # last, after pip's own lines
    assert not (work / ".env").exists()  # nothing half-configured


def test_torchvision_that_does_not_load_is_reported(tmp_path, comfy_repo):
    """A torchvision built for another torch (a CUDA wheel next to CPU torch) fails at import: say so at install."""
    work = tmp_path / "work"
    work.mkdir()
    r = install(work, "--git-url", str(comfy_repo))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cannot load torch and torchvision" in r.stdout  # this venv has no torch at all
    site = next((work / "runtime" / "ComfyUI" / "venv" / "lib").glob("python3*/site-packages"))
    for name, body in {
        "torch": "__version__ = '9.9+cpu'\n",
        "torchvision": "raise RuntimeError('operator torchvision::nms does not exist')\n",
    }.items():
        (site / name).mkdir()
        (site / name / "__init__.py").write_text(body)
    r = install(work, "--git-url", str(comfy_repo))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cannot load torch and torchvision: RuntimeError: operator torchvision::nms does not exist" in r.stdout
    assert "--torch skip" in r.stdout and "ComfyUI is ready" not in r.stdout

    (site / "torchvision" / "__init__.py").write_text("__version__ = '0.99+cpu'\n")
    r = install(work, "--git-url", str(comfy_repo))
    assert "torch 9.9+cpu · torchvision 0.99+cpu load" in r.stdout and "ComfyUI is ready" in r.stdout
