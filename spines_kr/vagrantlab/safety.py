"""The machine's own network, before and after: what the Vagrant lab promises not to change.

``snapshot()`` reads, in the namespace this process runs in (the root namespace for the lab's
commands), ``ip -j link``, ``ip -j route show table all`` (IPv4 and IPv6), ``ip -j rule``, ``nft
list ruleset`` and the forwarding sysctls; ``diff(before, after)`` names what differs.  The lab
takes one before ``up`` and compares at the end of ``up`` and of ``down``.
"""

from __future__ import annotations

import difflib
import json
import shutil
import subprocess
from pathlib import Path

COMMANDS = {
    "link": ["ip", "-j", "link"],
    "route": ["ip", "-j", "route", "show", "table", "all"],
    "route6": ["ip", "-j", "-6", "route", "show", "table", "all"],
    "rule": ["ip", "-j", "rule"],
    "nft": ["nft", "list", "ruleset"],
}
SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding",
           "net/ipv4/conf/all/rp_filter", "net/bridge/bridge-nf-call-iptables")


def _run(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return f"({argv[0]} not installed)"
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    return r.stdout if r.returncode == 0 else f"(exit {r.returncode}) {r.stderr.strip()}"


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=1, sort_keys=True)
    except ValueError:
        return text


def snapshot() -> dict[str, str]:
    snap = {name: _pretty(_run(argv)) for name, argv in COMMANDS.items()}
    for key in SYSCTLS:
        try:
            snap[f"sysctl {key}"] = Path("/proc/sys", key).read_text().strip()
        except OSError:
            snap[f"sysctl {key}"] = "(absent)"
    return snap


def diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Unified diff lines of every part that changed (empty: identical)."""
    out: list[str] = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, ""), after.get(key, "")
        if a != b:
            out += list(difflib.unified_diff(a.splitlines(), b.splitlines(),
                                             f"{key} before", f"{key} after", lineterm="", n=1))
    return out


def save(path: Path, snap: dict[str, str]) -> None:
    path.write_text(json.dumps(snap, indent=1) + "\n")


def load(path: Path) -> dict[str, str] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
