"""The package's layers point down only, and importing the low ones does no work.

The layers, top to bottom (docs/architecture.md explains each):

    cli                                  the `comfyhub` command
    app | doctor | comfyui_install       what the command runs: the web app, the checks,
      | remote                           the ComfyUI installer, the client of a running
                                         comfyhub's API (siblings, independent)
    api | proxy                          the two front doors: /api routes, /comfy/ gateway
                                         (siblings, independent)
    auth, security                       who is asking: passwords, sessions, the token and
                                         Origin checks both front doors share
    jobs                                 batch jobs: a client of the lifecycle (it asks
                                         `services` to start instances)
    services                             the instance lifecycle
    outputs                              generation records, files, export (the manager
                                         pulls the history before a stop)
    launchers                            how a process (or Ray actor) is started
    migrations                           the schema history
    models, db, config, metrics,         foundations (and the root package's version)
    net, reasons, messages, fair

A module may import modules of its own layer and of any layer below it, never above.
"Independent" siblings may not import each other either: `api` and `proxy` share
nothing but what lies below them (today neither imports the other; their common token
and Origin rules live in `security`), and `doctor` / `comfyui_install` are tools of the
CLI that must work without the web app. Where the other modules go, and why:

- `auth` and `security` sit just below the front doors, which are their only users
  besides the CLI (which hashes a password); they need only the models. Being above
  `services` keeps logins out of the lifecycle.
- `doctor` and `comfyui_install` are imported by the CLI only, and use services (the GPU
  picker), so they sit with `app`, one below the CLI.
- `remote` (`comfyhub jobs submit|watch`) talks to a running comfyhub over HTTP, as any
  script would: a tool of the CLI, not part of the server. It sits with `app` and the
  other tools and imports nothing of comfyhub, so it can never reach the database or
  the server's code behind the API's back (in `jobs` it would sit among the runner's
  modules, above `services`, free to import them).
- `metrics` is a plain Prometheus registry that the app, the services and the proxy all
  write to, so it is a foundation.
- `migrations/` is run by Alembic from its path, never imported: nothing may import it,
  and it may use only the foundations (the models and the engine).
- `web/` holds static files the app serves; it has no Python, so it is not in the graph.
- `net/` (the HTTP/1.1 client and the port helpers) is used by both the proxy and the
  services, so it is a foundation.

- `comfyui_extension` runs inside ComfyUI's Python, where comfyhub is not installed
  (comfyhub copies the file into each instance folder). It is standalone: it imports no
  part of comfyhub and no part of comfyhub imports it, and beyond the standard library it
  may use only aiohttp and ComfyUI's own `server` and `folder_paths`.

- `messages` (the Chinese refusals both front doors answer with: 未登录…, 无操作权限…)
  is shared by the siblings `api` and `proxy`, so it lies below both, with no imports.

- `fair` (long work over many rows done in slices, a turn of the event loop between
  them) is used by the API's lists and the heartbeat: a foundation with no imports.

- `reasons` (stop and failure codes with their words) is stored by the services and
  named by the launchers, also inside Ray actors on other machines: a foundation with
  no imports at all.

Foundations import no other part of comfyhub except the leaves `config`, `models` and
`reasons` (metrics labels instances by the models' statuses): they are what everything
else is built on. An import inside a function counts (a lazy import is still a
dependency); one under `if TYPE_CHECKING:` does not (it never runs).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "comfyhub"

LAYERS: list[tuple[set[str], bool]] = [  # (units, whether they must not import each other)
    ({"cli"}, False),
    ({"app", "doctor", "comfyui_install", "remote", "serving"}, True),
    ({"api", "proxy"}, True),
    ({"auth", "security", "handoff"}, False),
    ({"jobs"}, False),
    ({"services"}, False),
    ({"outputs"}, False),
    ({"launchers"}, False),
    ({"migrations"}, False),
    # "": comfyhub/__init__.py
    ({"models", "db", "config", "metrics", "net", "reasons", "messages", "fair", ""}, False),
    ({"comfyui_extension"}, True),  # standalone: runs inside ComfyUI
]
STANDALONE = {"comfyui_extension"}
STANDALONE_MAY_USE = {"aiohttp", "server", "folder_paths"}
FOUNDATIONS = LAYERS[-2][0]
FOUNDATIONS_MAY_IMPORT = {"config", "models", "reasons", ""}
NEVER_IMPORTED = {"migrations"}
NOT_PYTHON = {"web"}


@dataclass(frozen=True)
class Import:
    source: str  # module that imports, e.g. comfyhub.services.health
    target: str  # module imported, e.g. comfyhub.proxy.upstream
    where: str  # file:line


def layer_of(unit: str) -> int:
    for index, (units, _) in enumerate(LAYERS):
        if unit in units:
            return index
    raise KeyError(unit)


def unit_of(module: str) -> str:
    """The layer unit of a module: its top-level module or package under comfyhub."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def is_module(module: str, package_dir: Path = PACKAGE) -> bool:
    path = package_dir.joinpath(*module.split(".")[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def module_name(path: Path, package_dir: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["comfyhub", *parts])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node that can run, skipping the bodies of `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_in(source: str, module: str, filename: str, package_dir: Path = PACKAGE) -> list[Import]:
    """The comfyhub modules that `source` (the text of `module`) imports, with their lines."""
    is_package = Path(filename).name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, node: ast.AST) -> None:
        edge = Import(module, target, f"{filename}:{node.lineno}")
        if (target == "comfyhub" or target.startswith("comfyhub.")) and edge not in found:
            found.append(edge)

    for node in _runtime_nodes(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            for alias in node.names:
                # `from comfyhub import auth` imports the module comfyhub.auth.
                child = f"{parent}.{alias.name}"
                add(child if is_module(child, package_dir) else parent, node)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.args[0].value, node)
    return found


def package_imports(package_dir: Path = PACKAGE) -> list[Import]:
    edges = []
    for path in sorted(package_dir.rglob("*.py")):
        name = str(path.relative_to(package_dir.parent))
        edges += imports_in(path.read_text(encoding="utf-8"), module_name(path, package_dir), name, package_dir)
    return edges


def violation(edge: Import) -> str | None:
    """Why this import breaks the layering, or None."""
    source, target = unit_of(edge.source), unit_of(edge.target)
    if source == target:
        return None
    if target in NEVER_IMPORTED:
        return f"{target} is run by Alembic from its path and must not be imported"
    if source in STANDALONE or target in STANDALONE:
        return f"{source if source in STANDALONE else target} runs inside ComfyUI: it is standalone"
    below, above = layer_of(source), layer_of(target)
    if above < below:
        return f"{source} may not import {target}, a higher layer"
    if above == below and LAYERS[below][1]:
        return f"{source} and {target} are independent siblings"
    if source in FOUNDATIONS and target not in FOUNDATIONS_MAY_IMPORT:
        return f"foundation {source} may import only config, not {target}"
    return None


def violations(edges: list[Import]) -> list[str]:
    return [f"{e.where}: {e.source} -> {e.target}: {why}" for e in edges if (why := violation(e))]


# --- the package --------------------------------------------------------------------------


def test_every_part_of_the_package_has_a_layer():
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    placed = set().union(*(units for units, _ in LAYERS))
    assert units - placed == set(), "put these in LAYERS (and in docs/architecture.md)"
    for name in NOT_PYTHON:
        assert not list((PACKAGE / name).rglob("*.py")), f"{name}/ is static files, not Python"


def test_layers_point_down_only():
    found = violations(package_imports())
    if found:
        pytest.fail("imports against the layers:\n" + "\n".join(found), pytrace=False)


def test_the_comfyui_extension_uses_only_the_standard_library_aiohttp_and_comfyui():
    allowed = set(sys.stdlib_module_names) | STANDALONE_MAY_USE | {"__future__"}
    for unit in STANDALONE:
        for path in (PACKAGE / unit).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    assert node.level == 0, f"{path}:{node.lineno}: a relative import"
                    names = [node.module or ""]
                for name in names:
                    assert name.split(".")[0] in allowed, f"{path}:{node.lineno}: imports {name}"


# --- the checker itself: it must be able to fail --------------------------------------------


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    package = tmp_path / "comfyhub"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return package


def test_checker_finds_lazy_relative_and_sibling_imports_and_skips_type_checking(tmp_path):
    package = _fake_package(
        tmp_path,
        {
            "services/__init__.py": "",
            "services/ports.py": "",
            "proxy/__init__.py": "",
            "proxy/upstream.py": "",
            "api/__init__.py": "",
            "net/__init__.py": "",
            "models.py": "",
            "db.py": "",
            "launchers/__init__.py": "",
            "launchers/actor.py": """
            from typing import TYPE_CHECKING
            from ..models import Base
            if TYPE_CHECKING:
                from comfyhub.services.manager import ServiceManager
            def free(port):
                from comfyhub.services.ports import port_is_free
                return port_is_free(port)
        """,
            "api/meta.py": "import comfyhub.proxy.upstream\n",
            "net/http1.py": "from comfyhub import db\n",
        },
    )
    found = violations(package_imports(package))
    assert [line.split(": ")[0] for line in found] == [
        "comfyhub/api/meta.py:1",
        "comfyhub/launchers/actor.py:7",
        "comfyhub/net/http1.py:1",
    ], found
    assert "independent siblings" in found[0]
    assert "comfyhub.launchers.actor -> comfyhub.services.ports" in found[1]
    assert "foundation net" in found[2]


# --- importing does no work -----------------------------------------------------------------

_PROBE = """
import importlib, json, pkgutil, socket, subprocess, sys, threading
import argon2

work = []
def spy(label, original):
    def call(*args, **kwargs):
        work.append(label)
        return original(*args, **kwargs)
    return call

argon2.PasswordHasher.hash = spy("argon2 hash", argon2.PasswordHasher.hash)
subprocess.Popen.__init__ = spy("subprocess", subprocess.Popen.__init__)
socket.socket.__init__ = spy("socket", socket.socket.__init__)
threading.Thread.start = spy("thread", threading.Thread.start)

package = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    importlib.import_module(info.name)
print(json.dumps(sorted(set(work))))
"""


@pytest.mark.parametrize("package", ["comfyhub.proxy", "comfyhub.services", "comfyhub.net"])
def test_importing_does_no_work(package):
    """No password hashing, process, socket or thread at import: the CLI, the tests and
    every worker import these, and work belongs in startup, where it can fail clearly."""
    if not is_module(package):
        pytest.skip(f"{package} does not exist on this branch yet")
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, package], check=False, capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
