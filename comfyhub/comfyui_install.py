"""`comfyhub comfyui install`: a ComfyUI checkout with its own venv, ready for comfyhub.

Steps, each shown with its progress: clone (or update) the repository, create the
venv, install torch (CPU or CUDA build, or keep the one there with --torch skip), install
ComfyUI's requirements (never swapping the torch build the previous step left), create
custom_nodes/ and models/, and write COMFYUI_REPO_PATH / COMFYUI_PYTHON into .env.
Running it again updates the checkout and the packages instead of failing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from dotenv import set_key
from rich.console import Console

TORCH_CHOICES = ("cpu", "cuda", "skip")
# The CPU build of torch comes from PyTorch's own index; the default PyPI build is CUDA's.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# ComfyUI's requirements.txt lists these too; the requirements step keeps what is installed.
TORCH_PACKAGES = ("torch", "torchvision", "torchaudio")


class InstallError(Exception):
    """A step failed; the message says what to do."""


class Installer:
    def __init__(
        self,
        target: Path,
        git_url: str,
        ref: str | None,
        torch: str,
        extra_packages: list[str],
        env_file: Path,
        console: Console | None = None,
    ):
        self.target = target.resolve()
        self.git_url = git_url
        self.ref = ref
        self.torch = torch
        self.extra_packages = extra_packages
        self.env_file = env_file
        # soft_wrap: long paths stay on one line in logs and narrow terminals.
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.python = self.target / "venv" / "bin" / "python"
        self._steps = 6
        self._step = 0

    # --- steps ---------------------------------------------------------------------------

    def run(self) -> None:
        self._checkout()
        self._venv()
        self._torch()
        self._requirements()
        self._folders()
        self._write_env()
        if self._torch_loads():
            self.console.print(f"[bold green]ComfyUI is ready[/] at {self.target}")
        self.console.print("Start comfyhub with [bold]./scripts/serve.sh[/] (or restart it) to use it.")

    def _torch_loads(self) -> bool:
        """ComfyUI imports torch and torchvision first: say now, not at the first start, if they do not load."""
        code = "import torch, torchvision; print('torch', torch.__version__, '· torchvision', torchvision.__version__)"
        try:
            r = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True, timeout=300)
            ok, out = r.returncode == 0, (r.stdout if r.returncode == 0 else r.stderr).strip()
        except subprocess.TimeoutExpired:
            ok, out = False, "importing torch took over 300 s"
        if ok:
            self.console.print(f"[green]✓[/] {out.splitlines()[-1]} load")
            return True
        last = (out.splitlines() or ["no output"])[-1]
        self.console.print(
            f"[bold yellow]![/] ComfyUI's python cannot load torch and torchvision: {last}\n"
            "  ComfyUI will not start until it can.\n"
            f"  what to do: install builds of torch and torchvision that match (CPU: {self.python} -m pip install "
            f"torch torchvision --index-url {TORCH_CPU_INDEX}), then run this again with --torch skip"
        )
        return False

    def _checkout(self) -> None:
        if (self.target / ".git").is_dir():
            self._header(f"Updating the ComfyUI checkout in {self.target}")
            self._run(["git", "-C", str(self.target), "fetch", "--tags", "--prune", "origin"], "git fetch")
            if self.ref:
                self._run(["git", "-C", str(self.target), "checkout", "--quiet", self.ref], f"git checkout {self.ref}")
            else:
                detached = (
                    subprocess.run(
                        ["git", "-C", str(self.target), "symbolic-ref", "-q", "HEAD"], capture_output=True
                    ).returncode
                    != 0
                )
                if detached:
                    # Installed with --ref TAG: there is no branch to pull.
                    raise InstallError(
                        f"{self.target} is pinned to a tag or commit (installed with --ref): run this "
                        "again with --ref NEW_TAG, or with --ref master to follow the default branch"
                    )
                self._run(
                    ["git", "-C", str(self.target), "pull", "--ff-only", "--quiet"],
                    "git pull",
                    hint=f"keep or undo local changes in {self.target} first (git -C {self.target} status)",
                )
            return
        if self.target.exists() and any(self.target.iterdir()):
            raise InstallError(f"{self.target} exists and is not a git checkout: choose another --dir or remove it")
        self._header(f"Cloning {self.git_url}")
        # Clone next to the target and move it in place: a failed clone leaves nothing behind.
        self.target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".comfyui-clone-", dir=self.target.parent))
        try:
            self._run(
                ["git", "clone", "--quiet", self.git_url, str(staging / "repo")],
                "git clone",
                hint=self._no_clone_hint(),
            )
            if self.ref:
                self._run(
                    ["git", "-C", str(staging / "repo"), "checkout", "--quiet", self.ref],
                    f"git checkout {self.ref}",
                    hint="check --ref: a tag, branch or commit of that repository",
                )
            if not (staging / "repo" / "main.py").is_file():
                raise InstallError(f"{self.git_url} has no main.py: it does not look like ComfyUI")
            if self.target.exists():
                self.target.rmdir()
            shutil.move(str(staging / "repo"), self.target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _no_clone_hint(self) -> str:
        # Machines without GitHub are common (firewalled labs, mirrors only): name both ways
        # around it, not just "check the network".
        return (
            f"check the network and the URL; then either\n"
            f"    - clone from a mirror you can reach: comfyhub comfyui install --git-url URL "
            f"(or COMFYUI_GIT_URL in .env), or\n"
            f"    - use a ComfyUI you already have, without this command: set COMFYUI_REPO_PATH (the checkout "
            f"with main.py) and COMFYUI_PYTHON (the python that runs it) in {self.env_file}"
        )

    def _venv(self) -> None:
        if self.python.exists():
            self._header("Virtual environment exists", done=True)
            return
        self._header(f"Creating a virtual environment with {sys.executable}")
        self._run(
            [sys.executable, "-m", "venv", str(self.target / "venv")],
            "python -m venv",
            hint="on Debian: apt-get install -y python3-venv",
        )

    def _torch(self) -> None:
        pip = [str(self.python), "-m", "pip", "install", "--disable-pip-version-check", "--upgrade"]
        by_hand = (
            f"or install them yourself ({self.python} -m pip install torch torchvision torchaudio …) "
            "and run this again with --torch skip"
        )
        if self.torch == "skip":
            self._header("torch: skipped (--torch skip), keeping what the venv has", done=True)
        elif self.torch == "cpu":
            self._header("Installing torch (CPU build; a few hundred MB)")
            self._run(
                [*pip, *TORCH_PACKAGES, "--index-url", TORCH_CPU_INDEX],
                "pip install torch",
                hint=f"the CPU build comes from {TORCH_CPU_INDEX}: check that this machine reaches it, {by_hand}",
            )
        else:
            self._header("Installing torch (CUDA build; several GB)")
            self._run(
                [*pip, *TORCH_PACKAGES],
                "pip install torch",
                hint=f"check the network and the free disk space (several GB), {by_hand}",
            )

    def _requirements(self) -> None:
        requirements = self.target / "requirements.txt"
        pip = [str(self.python), "-m", "pip", "install", "--disable-pip-version-check", "--upgrade"]
        self._header("Installing ComfyUI's requirements")
        if requirements.is_file():
            # requirements.txt names torch as well: with --upgrade, pip would replace the CPU
            # build (or the one installed by hand) with PyPI's newest CUDA build. Pin it.
            pins = self._installed(TORCH_PACKAGES)
            with tempfile.NamedTemporaryFile("w", prefix="comfyhub-torch-", suffix=".txt") as constraints:
                constraints.write("".join(f"{name}=={version}\n" for name, version in pins.items()))
                constraints.flush()
                if pins:
                    self.console.print("    [dim]keeping " + ", ".join(f"{n} {v}" for n, v in pins.items()) + "[/]")
                self._run(
                    [*pip, "-r", str(requirements), "-c", constraints.name],
                    "pip install -r requirements.txt",
                    hint="see pip's message above; with --torch skip, the torch in the venv must suit ComfyUI",
                )
        if self.extra_packages:
            # ComfyUI imports these without listing them.
            self._run([*pip, *self.extra_packages], f"pip install {' '.join(self.extra_packages)}")

    def _installed(self, names) -> dict[str, str]:
        """Versions of these distributions in the venv (the ones not installed are left out)."""
        code = (
            "import importlib.metadata as m, sys\n"
            "for n in sys.argv[1:]:\n"
            "    try: print(n, m.version(n))\n"
            "    except m.PackageNotFoundError: pass\n"
        )
        r = subprocess.run([str(self.python), "-c", code, *names], capture_output=True, text=True)
        return dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)

    def _folders(self) -> None:
        self._header("Creating custom_nodes/ and models/")
        for name in ("custom_nodes", "models"):
            (self.target / name).mkdir(exist_ok=True)

    def _write_env(self) -> None:
        self._header(f"Writing COMFYUI_REPO_PATH and COMFYUI_PYTHON into {self.env_file}")
        update_env_file(self.env_file, {"COMFYUI_REPO_PATH": str(self.target), "COMFYUI_PYTHON": str(self.python)})

    # --- helpers -------------------------------------------------------------------------

    def _header(self, text: str, done: bool = False) -> None:
        self._step += 1
        mark = "[green]✓[/]" if done else "[cyan]→[/]"
        self.console.print(f"{mark} [bold][{self._step}/{self._steps}][/] {text}")

    def _run(self, cmd: list[str], what: str, hint: str = "") -> None:
        """Run a step's command, showing elapsed time and its latest output line."""
        started = time.monotonic()
        last: deque[str] = deque(maxlen=15)
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "PIP_PROGRESS_BAR": "off"}
        with self.console.status(f"{what} …") as status:
            try:
                proc = subprocess.Popen(
                    cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, errors="replace"
                )
            except FileNotFoundError:
                raise InstallError(f"{cmd[0]} not found: install it first (apt-get install -y {cmd[0]})") from None
            for line in proc.stdout:
                line = line.rstrip()
                if line:
                    last.append(line)
                    status.update(f"{what} … {int(time.monotonic() - started)} s  [dim]{line[:90]}[/]")
            code = proc.wait()
        if code != 0:
            # What to do comes last, where the eye lands after the tool's own output.
            tail = "\n".join(f"    {line}" for line in last)
            raise InstallError(f"{what} failed (exit {code}):\n{tail}" + (f"\n  what to do: {hint}" if hint else ""))
        self.console.print(f"    [dim]{what}: done in {time.monotonic() - started:.1f} s[/]")


def update_env_file(path: Path, values: dict[str, str]) -> None:
    """Set KEY='value' lines in a .env file, keeping every other line and comment as it was.

    python-dotenv writes what pydantic-settings reads back: values always quoted (a path
    with spaces, `#` or quotes survives), the file replaced atomically with its mode kept,
    and a symlinked .env updated where it points.
    """
    for key, value in values.items():
        set_key(path, key, value, quote_mode="always", follow_symlinks=True)
