"""The layers hold: the domain is pure, the CLI reaches adapters only through its composition root, use
cases leave raw I/O to the adapters and take the host they work on from the command instead of building
it, the Protocols they take name no adapter, adapters know nothing of the
use cases, and nothing below the CLI imports it. Checked on the source text, so no module is imported to
check it.

The errors module is part of the core: every layer raises its one-sentence errors, the domain included.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "docker_xms"
# The one CLI module that builds adapters (engine, settings, profile store) for the commands.
COMPOSITION_ROOT = "docker_xms.cli.context"
# The Protocols the use cases take: the real adapters and the in-memory fakes both satisfy them, so they
# speak in domain types only.
BOUNDARIES = "docker_xms.usecases.boundaries"
# The executable hands every invocation to the command line: the one module outside it that may import it.
EXECUTABLES = {"docker_xms.entry", "docker_xms.__main__"}
# Standard modules that reach the host: the domain may not use them.
HOST_MODULES = {"os", "subprocess", "socket", "pathlib", "importlib", "shutil", "tempfile", "io", "urllib", "http"}
# Calls and attributes that do raw I/O: in a use case they belong in an adapter.
RAW_IO_ATTRIBUTES = {"environ", "getenv", "read_text", "write_text", "read_bytes", "write_bytes", "geteuid"}

# What opens the host's parts: the commands build them once (cli/context.host) and hand them to the use cases.
HOST_BUILDERS = {
    "docker_xms.adapters.netfilter.Netfilter",
    "docker_xms.adapters.engine.Engine.connect",
    "docker_xms.usecases.rt.open_host",
}

# Raw I/O still done in use cases, each to move into an adapter, and engines they still connect to
# themselves; the list may only shrink.
KNOWN: set[tuple[str, str]] = {
    ("docker_xms.usecases.listing", "calls docker_xms.adapters.engine.Engine.connect()"),
    ("docker_xms.usecases.metrics", "calls docker_xms.adapters.engine.Engine.connect()"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, module: str) -> list[str]:
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out += [f"{_base(node, module)}.{alias.name}" for alias in node.names]
    return out


def _base(node: ast.ImportFrom, module: str) -> str:
    # A relative import is resolved against the module's package.
    base = ".".join([*module.split(".")[: -node.level], node.module or ""]) if node.level else node.module
    return (base or "").rstrip(".")


def called(tree: ast.AST, module: str) -> list[str]:
    """The dotted name of every call's callee, by what its first name was imported as (a name not
    imported is taken as the module's own)."""
    local: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            local |= {
                (a.asname or a.name).split(".")[0]: a.name if a.asname else a.name.split(".")[0] for a in node.names
            }
        elif isinstance(node, ast.ImportFrom):
            local |= {a.asname or a.name: f"{_base(node, module)}.{a.name}" for a in node.names}
    out: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        parts: list[str] = []
        func = node.func
        while isinstance(func, ast.Attribute):
            parts.insert(0, func.attr)
            func = func.value
        if isinstance(func, ast.Name):
            out.append(".".join([local.get(func.id, f"{module}.{func.id}"), *parts]))
    return out


def violations(module: str, source: str) -> list[str]:
    """What `module` (a dotted name under docker_xms) does that its layer may not."""
    tree = ast.parse(source)
    names = imported(tree, module)
    found: list[str] = []
    if module.startswith("docker_xms.domain"):
        for name in names:
            top = name.split(".")[0]
            if name.startswith(("docker_xms.domain", "docker_xms.errors")) or name == "docker_xms":
                continue
            if top == "docker_xms" or top not in sys.stdlib_module_names or top in HOST_MODULES:
                found.append(f"imports {name}")
    if module.startswith("docker_xms.cli") and module != COMPOSITION_ROOT:
        found += [f"imports {name}" for name in names if name.startswith("docker_xms.adapters")]
    if module == BOUNDARIES:
        found += [f"imports {name}" for name in names if _within(name, "docker_xms.adapters")]
    if module.startswith("docker_xms.adapters"):
        found += [f"imports {name}" for name in names if _within(name, "docker_xms.usecases")]
    if not _within(module, "docker_xms.cli") and module not in EXECUTABLES:
        found += [f"imports {name}" for name in names if _within(name, "docker_xms.cli")]
    if module.startswith("docker_xms.usecases"):
        found += [f"imports {name}" for name in names if name.split(".")[0] in ("subprocess", "socket")]
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
                found.append("calls open()")
            if isinstance(node, ast.Attribute) and node.attr in RAW_IO_ATTRIBUTES:
                found.append(f"uses .{node.attr}")
        found += [f"calls {name}()" for name in called(tree, module) if name in HOST_BUILDERS]
    return sorted(set(found))


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def all_violations() -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        out |= {(module, v) for v in violations(module, path.read_text("utf-8"))}
    return out


def test_every_layer_keeps_to_its_own() -> None:
    found = all_violations()
    assert found - KNOWN == set()
    # A violation fixed comes off the list, so that it cannot come back unnoticed.
    assert KNOWN - found == set()


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("docker_xms.domain.x", "from docker_xms.adapters.cgroups import HostRt\n", "imports docker_xms.adapters"),
        ("docker_xms.domain.x", "import os\n", "imports os"),
        ("docker_xms.domain.x", "from pathlib import Path\n", "imports pathlib"),
        ("docker_xms.domain.x", "import docker\n", "imports docker"),
        ("docker_xms.domain.x", "from ..usecases import rt\n", "imports docker_xms.usecases"),
        ("docker_xms.domain.x", "from docker_xms.settings import Settings\n", "imports docker_xms.settings"),
        ("docker_xms.cli.x", "def f():\n    from docker_xms.adapters import nsenter\n", "imports docker_xms.adapters"),
        ("docker_xms.usecases.x", "import subprocess\n", "imports subprocess"),
        ("docker_xms.usecases.x", "import socket\n", "imports socket"),
        ("docker_xms.usecases.x", "import os\nx = os.environ.get('A')\n", "uses .environ"),
        ("docker_xms.usecases.x", "import os\nx = os.getenv('A')\n", "uses .getenv"),
        ("docker_xms.usecases.x", "with open('/etc/x') as f:\n    pass\n", "calls open()"),
        ("docker_xms.usecases.x", "def f(p):\n    return p.read_text()\n", "uses .read_text"),
        ("docker_xms.usecases.x", "def f(p):\n    p.write_text('x')\n", "uses .write_text"),
        (
            "docker_xms.usecases.x",
            "from docker_xms.adapters.netfilter import Netfilter\nnf = Netfilter()\n",
            "calls docker_xms.adapters.netfilter.Netfilter()",
        ),
        (
            "docker_xms.usecases.x",
            "from docker_xms.adapters import netfilter\nnf = netfilter.Netfilter()\n",
            "calls docker_xms.adapters.netfilter.Netfilter()",
        ),
        (
            "docker_xms.usecases.x",
            "def f(e, s):\n    from .rt import open_host\n    return open_host(e, s)\n",
            "calls docker_xms.usecases.rt.open_host()",
        ),
        (
            "docker_xms.usecases.x",
            "def f():\n    from docker_xms.adapters.engine import Engine\n    return Engine.connect()\n",
            "calls docker_xms.adapters.engine.Engine.connect()",
        ),
        (BOUNDARIES, "from docker_xms.adapters.engine import ContainerInfo\n", "imports docker_xms.adapters"),
        (BOUNDARIES, "from ..adapters import netfilter\n", "imports docker_xms.adapters"),
        ("docker_xms.adapters.x", "from docker_xms.usecases.rt import RtHost\n", "imports docker_xms.usecases"),
        ("docker_xms.adapters.x", "def f():\n    from ..usecases import reconcile\n", "imports docker_xms.usecases"),
        ("docker_xms.usecases.x", "from docker_xms.cli.render import console\n", "imports docker_xms.cli"),
        ("docker_xms.adapters.x", "from docker_xms.cli import context\n", "imports docker_xms.cli"),
        ("docker_xms.domain.x", "import docker_xms.cli\n", "imports docker_xms.cli"),
        ("docker_xms.settings", "from docker_xms import cli\n", "imports docker_xms.cli"),
    ],
)
def test_a_planted_violation_is_found(module: str, source: str, expected: str) -> None:
    assert any(v.startswith(expected) for v in violations(module, source))


@pytest.mark.parametrize(
    ("module", "source"),
    [
        (
            "docker_xms.domain.x",
            "import re\nfrom docker_xms.errors import BadInput\nfrom docker_xms.domain import ports\n",
        ),
        ("docker_xms.cli.context", "from docker_xms.adapters.engine import Engine\n"),
        ("docker_xms.cli.x", "from docker_xms.usecases.rt import status\n"),
        ("docker_xms.usecases.x", "from docker_xms.adapters import cgroups\nx = cgroups.procs('/docker')\n"),
        # Records of an adapter are values, not the host: a use case may make them.
        ("docker_xms.usecases.x", "from docker_xms.adapters import rootfs\nx = rootfs.RootfsSpec('a', 'b')\n"),
        ("docker_xms.usecases.x", "from docker_xms.usecases.host import Host\nh = Host(rt, nf)\n"),
        ("docker_xms.cli.context", "from docker_xms.usecases.rt import open_host\nrt = open_host(e, s)\n"),
        (BOUNDARIES, "from docker_xms.domain.engine_types import ContainerInfo\n"),
        ("docker_xms.adapters.x", "from docker_xms.domain.labels import MANAGED_LABEL\n"),
        ("docker_xms.entry", "def main():\n    from docker_xms.cli import main as cli_main\n"),
        ("docker_xms.__main__", "from docker_xms.cli import main\n"),
        ("docker_xms.cli.agent", "from docker_xms.cli import context\n"),
    ],
)
def test_what_a_layer_may_do_is_not_reported(module: str, source: str) -> None:
    assert violations(module, source) == []


def test_a_planted_module_in_the_tree_fails_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "docker_xms"
    (package / "domain").mkdir(parents=True)
    (package / "domain" / "bad.py").write_text("import subprocess\n", "utf-8")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert all_violations() == {("docker_xms.domain.bad", "imports subprocess")}
