"""The architecture, checked: routing/ and wire/ are pure; only netlink/ imports pyroute2."""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[2] / "spines_kr"
IMPURE = {"socket", "time", "asyncio", "os", "subprocess", "select", "pyroute2", "psutil",
          "structlog", "threading", "spines_kr.daemon", "spines_kr.netlink", "spines_kr.lab"}


def imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


@pytest.mark.parametrize("layer", ["routing", "wire"])
def test_pure_layers_do_no_io(layer):
    for f in (PKG / layer).rglob("*.py"):
        for mod in imports(f):
            assert not any(mod == bad or mod.startswith(bad + ".") for bad in IMPURE), \
                f"{f.relative_to(PKG)} imports {mod}"


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
