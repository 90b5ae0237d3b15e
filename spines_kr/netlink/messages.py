"""pyroute2's netlink message classes, loaded without pyroute2's package initialisation.

spines-kr uses pyroute2 for its message declarations and codecs (``rtmsg``, ``ifinfmsg``,
``ifaddrmsg``, ``fibmsg``, ``tcmsg`` with the tbf and netem option encoders, ``nlmsg`` and
``nla_base_string`` as the base of our ``nhmsg``), never for its sockets.  But
``import pyroute2.netlink.rtnl.rtmsg`` first runs ``pyroute2/__init__.py``, which imports
IPRoute, NDB, conntrack, asyncio and more -- pyroute2 0.9.7 (and pyroute2-minimal 0.9.7 alike):
160 modules, about 120 ms and 11 MB that a daemon on a small router would carry for nothing.

So, when pyroute2 is not imported yet, its package is registered as a bare package object that
points at pyroute2's own directory, and the subpackages we need load from there as usual (their
own ``__init__`` files run; only the top-level one is skipped).  When pyroute2 is already
imported (a test, a library user), that one is used; should a future pyroute2 need its top-level
init for these modules, the import fails here and the normal import is used instead.

This is the only module that imports pyroute2; the rest of ``netlink`` imports from here.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def _lean_package() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations:
        return  # not installed: the imports below raise the usual ImportError
    pkg = types.ModuleType("pyroute2")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    pkg.__package__ = "pyroute2"
    sys.modules["pyroute2"] = pkg


_WHERE = {
    "nla_base_string": "pyroute2.netlink", "nlmsg": "pyroute2.netlink",
    "NetlinkDecodeError": "pyroute2.netlink.exceptions",
    "fibmsg": "pyroute2.netlink.rtnl.fibmsg", "ifaddrmsg": "pyroute2.netlink.rtnl.ifaddrmsg",
    "ifinfmsg": "pyroute2.netlink.rtnl.ifinfmsg", "rtmsg": "pyroute2.netlink.rtnl.rtmsg",
    "tcmsg": "pyroute2.netlink.rtnl.tcmsg", "sched_netem": "pyroute2.netlink.rtnl.tcmsg",
    "sched_tbf": "pyroute2.netlink.rtnl.tcmsg",
}
LEAN = False  # True once pyroute2 was loaded without its top-level init


def __getattr__(name: str):
    """Each class is loaded when first used: a daemon that never shapes traffic never loads
    pyroute2's tc modules (40 of them), one that routes in main never loads its rules."""
    global LEAN
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    fresh = "pyroute2" not in sys.modules
    _lean_package()
    try:
        module = importlib.import_module(where)
    except ImportError:
        if not fresh:
            raise
        for m in [m for m in sys.modules if m == "pyroute2" or m.startswith("pyroute2.")]:
            del sys.modules[m]
        module = importlib.import_module(where)  # the full package init, as pyroute2 wants
    else:
        LEAN = LEAN or fresh
    value = getattr(module, name)
    globals()[name] = value
    return value


__all__ = list(_WHERE)
