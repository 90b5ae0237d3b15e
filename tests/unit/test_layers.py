"""The architecture, checked: routing/ and wire/ are pure, and so is the protocol engine
(daemon/node.py, daemon/neighbors.py, daemon/flooding.py: "No I/O, no clock", as their
docstrings say) and the data links' protocols (dataplane/reliable.py, dataplane/realtime.py) with
every
module of ours it imports; only netlink/ imports pyroute2.

Pure means: no module that does I/O, keeps time, runs processes or threads, or logs (IMPURE),
no module of ours outside the pure set (netlink/, lab/, the daemon's process code), and no call
of the builtins that do I/O or import at run time (open, print, input, __import__, exec, eval).
"""

import ast
import pathlib
import sys

import pytest

PKG = pathlib.Path(__file__).resolve().parents[2] / "spines_kr"
IMPURE = {
    # I/O, the clock, processes, threads, logging
    "socket", "time", "asyncio", "os", "subprocess", "select", "selectors", "pyroute2", "psutil",
    "structlog", "logging", "threading", "multiprocessing", "concurrent", "signal", "sched",
    "datetime", "io", "sys", "shutil", "pathlib", "tempfile", "fcntl", "ctypes", "mmap", "ssl",
    "http", "urllib", "socketserver", "importlib",
    # our impure layers
    "spines_kr.daemon", "spines_kr.netlink", "spines_kr.lab", "spines_kr.cli", "spines_kr.config",
}
IMPURE_CALLS = {"open", "print", "input", "__import__", "exec", "eval", "breakpoint"}
# The protocol engine: pure although it lives in daemon/ (the daemon's process code drives it).
ENGINE = ("daemon/node.py", "daemon/neighbors.py", "daemon/flooding.py",
          "dataplane/reliable.py", "dataplane/realtime.py",  # + the data links' protocol cores
          "dataplane/stream.py")  # + the end-to-end stream core


def imports(path):
    """Modules ``path`` imports (relative imports resolved); ``from pkg import mod`` yields
    ``pkg.mod`` when that is a module of ours, else ``pkg``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # from . import x, from ..wire import packets
                package = path.relative_to(PKG.parent).with_suffix("").parts[:-node.level]
                module = ".".join((*package, *([module] if module else [])))
            if not module:
                continue
            subs = [f"{module}.{a.name}" for a in node.names
                    if module_file(f"{module}.{a.name}") is not None]
            yield from subs or [module]


def module_file(mod: str) -> pathlib.Path | None:
    """The file of one of our modules (``spines_kr.x.y``), or None."""
    if mod != "spines_kr" and not mod.startswith("spines_kr."):
        return None
    base = PKG.parent.joinpath(*mod.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def engine_closure() -> set[pathlib.Path]:
    """The engine's files and every module of ours they import, transitively."""
    todo = [PKG / f for f in ENGINE]
    seen: set[pathlib.Path] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo.extend(g for mod in imports(f) if (g := module_file(mod)) is not None)
    return seen


def allowed() -> set[str]:
    """The engine's modules: they may import each other although IMPURE names daemon/.
    (daemon/emulation.py, which neighbors.py imports, is in the closure and checked too.)"""
    return {"spines_kr." + e.removesuffix(".py").replace("/", ".") for e in ENGINE} | {
        "spines_kr.daemon.emulation"}


def violations(f: pathlib.Path, exempt: set[str] = frozenset()) -> list[str]:
    where = f.relative_to(PKG)
    out = []
    for mod in imports(f):
        if mod in exempt:
            continue
        if any(mod == bad or mod.startswith(bad + ".") for bad in IMPURE):
            out.append(f"{where} imports {mod}")
    for node in ast.walk(ast.parse(f.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in IMPURE_CALLS):
            out.append(f"{where}:{node.lineno} calls {node.func.id}()")
    return out


@pytest.mark.parametrize("layer", ["routing", "wire"])
def test_pure_layers_do_no_io(layer):
    files = sorted((PKG / layer).rglob("*.py"))
    assert files
    assert [v for f in files for v in violations(f)] == []


def test_the_protocol_engine_does_no_io_and_reads_no_clock():
    """node.py and neighbors.py, and all they import of ours (routing/, wire/, the daemon's
    own-packet emulation), transitively."""
    closure = engine_closure()
    assert {PKG / f for f in ENGINE} <= closure
    assert PKG / "daemon" / "emulation.py" in closure  # via neighbors.py: checked the same way
    found = [v for f in sorted(closure) for v in violations(f, allowed())]
    assert found == []


def test_the_engine_check_sees_a_violation(tmp_path, monkeypatch):
    """The check itself: an engine file that imports time or calls open() is caught."""
    fake = tmp_path / "spines_kr"
    (fake / "daemon").mkdir(parents=True)
    (fake / "daemon" / "node.py").write_text(
        "import time\nfrom spines_kr.netlink import kernel\nopen('x')\n")
    (fake / "daemon" / "neighbors.py").write_text("from spines_kr.daemon import node\n")
    (fake / "daemon" / "flooding.py").write_text("")
    (fake / "dataplane").mkdir()
    (fake / "dataplane" / "reliable.py").write_text("")
    (fake / "dataplane" / "realtime.py").write_text("")
    (fake / "dataplane" / "stream.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    found = [v for f in sorted(engine_closure()) for v in violations(f, allowed())]
    assert found == ["daemon/node.py imports time", "daemon/node.py imports spines_kr.netlink",
                     "daemon/node.py:3 calls open()"]


def test_only_netlink_imports_pyroute2():
    for f in PKG.rglob("*.py"):
        if f.is_relative_to(PKG / "netlink"):
            continue
        for mod in imports(f):
            assert not mod.startswith("pyroute2"), f"{f.relative_to(PKG)} imports {mod}"


def test_reconcile_diff_is_pure():
    f = PKG / "netlink" / "reconcile.py"
    if f.exists():
        assert not any(m.startswith("pyroute2") for m in imports(f))
