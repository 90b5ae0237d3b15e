"""Chaos soak on a running lab: random silent link failures, carrier losses and daemon
kills/restarts, and after each quiet period every node's kernel routes checked against an oracle
computed from the live topology.  Used by ``tests/lab/test_chaos.py`` and ``bench/chaos.py``
(``from tests.lab import chaos``); it lives with the tests, not in the installed package,
because the oracle needs networkx, a test dependency.

Entry points:
    TOPOLOGY, topology() -> Topology        10 nodes n0..n9: a ring plus 4 chords (n0-n5, n2-n7,
                                            n3-n8, n1-n6), 2-edge-connected, metric distance;
                                            node ni advertises 172.16.i.0/24
    expected_routes(st, failed) -> {node: {dst: [gateway]}}
                                            the oracle (networkx; ``failed`` = links taken out)
    components(st, failed) -> int           connected pieces of the live graph
    actual_routes(st) -> {node: {dst: [gateway]}}   every node's table (``ops.all_routes``)
    route_diff(want, have) -> {node: {"missing", "extra", "wrong"}}   (empty: all equal)
    other_routes(st, skip=None) -> {node: [route JSON]}   every IPv4 route of every table that is
                                            not protocol spines (81); ``skip``: {node: ifnames}
    add_foreign_routes(st)                  device-less routes of other protocols, one set per
                                            node (they survive any link failure)
    Chaos(st, seed, ...)                    ``.round()`` one random action and its quiet period,
                                            ``.heal_all()`` undo every failure and check again;
                                            each returns a record and raises ``ChaosFailure``
                                            (with the seed, the actions so far and the diff)

The oracle: a networkx graph of every node and the links not failed (a killed daemon is restarted
before the check, so its node is live).  For node s and every node d it reaches, the daemon's rule:
the neighbors that begin some shortest path (1 + dist(h, d) = dist(s, d)) -- all of them with
multipath (the default: one route, a next hop each), else the one of lowest logical ID (as an
IPv4 integer); the gateway is that neighbor's address on the link between them.  d's advertised
prefixes go the same way (one advertiser each).
Unreachable nodes and their prefixes have no route.

Actions (a seeded ``random.Random``; choices only ever depend on the seed, never on timing):
    heal    with probability ``heal_p`` (always once ``max_failed`` links are down) one failed
            link is healed first, in the same round;
    silent  ``ops.silent_failure`` on one end of a live link (nftables drop, interface up).  Only
            an end with no silent failure yet: ``ops`` keeps one nftables table per namespace and
            healing deletes all of it;
    carrier ``ops.carrier`` down on one end of a live link (both ends lose carrier);
    kill    ``netns.restart(lab, node, kill=True)``: SIGKILL (its routes stay), a new daemon.
Links may be cut until the graph is partitioned: unreachable destinations must lose their routes.

Quiet period: ``ops.wait`` for every table to equal the oracle (``quiet_timeout``), then the match
must hold for ``confirm_s`` more (a table that matched only in passing does not end a round).
Then every daemon must be alive (``netns.status``) and the routes of other protocols unchanged,
except those through an interface that lost carrier (the kernel drops them, or flags them
linkdown, until it is back); ``heal_all`` compares them all.
"""

from __future__ import annotations

import ipaddress
import json
import random
import shutil
import subprocess
import time
from pathlib import Path

from spines_kr.lab import netns, ops
from spines_kr.lab import topology as topo

NODES = [f"n{i}" for i in range(10)]
CHORDS = [("n0", "n5"), ("n2", "n7"), ("n3", "n8"), ("n1", "n6")]
EDGES = [(f"n{i}", f"n{(i + 1) % 10}") for i in range(10)] + CHORDS


def _topology_text() -> str:
    lines = ['# Chaos soak: a ring of 10 with 4 chords, every link one hop.', 'metric = "distance"']
    for i, n in enumerate(NODES):
        lines += ["[[node]]", f'name = "{n}"', f'prefixes = ["172.16.{i}.0/24"]']
    for a, b in EDGES:
        lines += ["[[link]]", f'a = "{a}"', f'b = "{b}"']
    return "\n".join(lines) + "\n"


TOPOLOGY = _topology_text()


def topology() -> topo.Topology:
    return topo.parse(TOPOLOGY)


class ChaosFailure(AssertionError):
    """A round did not end with every table equal to the oracle's, a daemon died, or a route of
    another protocol changed; the message has the seed, the actions so far and what differed."""


def _key(a: str, b: str) -> frozenset:
    return frozenset((a, b))


def _ip_int(addr: str) -> int:
    return int(ipaddress.IPv4Address(addr))


# -- the oracle --------------------------------------------------------------------------------

def expected_routes(st: dict, failed=()) -> dict[str, dict[str, list[str]]]:
    """What every node's kernel table should hold: {node: {dst: sorted gateways}} (see the
    module)."""
    import networkx as nx  # a test dependency (this module is not part of the package)

    nodes = {n["name"]: n for n in st["nodes"]}
    down = {_key(*l) if isinstance(l, tuple) else l for l in failed}
    gw = {}  # (s, h) -> h's address on link s-h
    g = nx.Graph()
    g.add_nodes_from(nodes)
    for ln in st["links"]:
        if _key(ln["a"], ln["b"]) in down:
            continue
        g.add_edge(ln["a"], ln["b"])
        gw[(ln["a"], ln["b"])] = ln["b_address"].split("/")[0]
        gw[(ln["b"], ln["a"])] = ln["a_address"].split("/")[0]
    dist = dict(nx.all_pairs_shortest_path_length(g))
    out = {}
    for s in nodes:
        routes = {}
        for d, cost in dist[s].items():
            if d == s:
                continue
            first = [h for h in g.neighbors(s) if d in dist[h] and 1 + dist[h][d] == cost]
            if not nodes[s].get("multipath", True):
                first = [min(first, key=lambda x: _ip_int(nodes[x]["logical_id"]))]
            for dst in [nodes[d]["logical_id"] + "/32", *nodes[d].get("prefixes", [])]:
                routes[dst] = sorted(gw[(s, h)] for h in first)
        out[s] = routes
    return out


def components(st: dict, failed=()) -> int:
    """How many pieces the live graph is in (1: connected)."""
    import networkx as nx

    down = {_key(*l) if isinstance(l, tuple) else l for l in failed}
    g = nx.Graph()
    g.add_nodes_from(n["name"] for n in st["nodes"])
    g.add_edges_from((l["a"], l["b"]) for l in st["links"] if _key(l["a"], l["b"]) not in down)
    return nx.number_connected_components(g)


def actual_routes(st: dict) -> dict[str, dict[str, list[str]]]:
    return ops.all_routes(st)


def route_diff(want: dict, have: dict) -> dict:
    """{node: {"missing": {dst: gws}, "extra": {dst: gws}, "wrong": {dst: [want, have]}}} of the
    nodes whose tables differ."""
    out = {}
    for n in sorted(set(want) | set(have)):
        w, h = want.get(n, {}), have.get(n, {})
        d = {"missing": {k: w[k] for k in sorted(set(w) - set(h))},
             "extra": {k: h[k] for k in sorted(set(h) - set(w))},
             "wrong": {k: [w[k], h[k]] for k in sorted(set(w) & set(h)) if w[k] != h[k]}}
        if any(d.values()):
            out[n] = {k: v for k, v in d.items() if v}
    return out


# -- routes of other protocols -----------------------------------------------------------------

def other_routes(st: dict, skip: dict | None = None) -> dict[str, list[str]]:
    """Every IPv4 route of every table in every node's namespace that is not ours, as sorted JSON
    strings; routes through an interface in ``skip[node]`` are left out."""
    out = {}
    for n in st["nodes"]:
        r = subprocess.run(["ip", "-4", "-n", n["netns"], "-j", "route", "show", "table", "all"],
                           capture_output=True, text=True, check=True)
        leave = set((skip or {}).get(n["name"], ()))
        out[n["name"]] = sorted(
            json.dumps(x, sort_keys=True) for x in json.loads(r.stdout or "[]")
            if str(x.get("protocol")) not in ("spines", "81") and x.get("dev") not in leave)
    return out


def add_foreign_routes(st: dict) -> None:
    """Routes of other protocols the daemons must never touch: a static blackhole /32 in main, a
    boot unreachable /24 in table 100, and (on the even nodes) a static prohibit route for one
    of the other nodes' prefixes at a high metric, next to the daemon's own route to it."""
    for i, n in enumerate(st["nodes"]):
        ns = n["netns"]
        for args in (["blackhole", f"192.0.2.{i + 1}/32", "proto", "static"],
                     ["unreachable", "198.51.100.0/24", "proto", "boot", "table", "100"]):
            subprocess.run(["ip", "-n", ns, "route", "add", *args], check=True, capture_output=True)
        if i % 2 == 0:
            other = st["nodes"][(i + 5) % len(st["nodes"])]
            for p in other.get("prefixes", []):
                subprocess.run(["ip", "-n", ns, "route", "add", "prohibit", p, "proto", "static",
                                "metric", "4000"], check=True, capture_output=True)


def save_logs(st: dict, dest: str | Path) -> Path:
    """Copy every daemon's log and output (they go with the lab's state directory) to ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    src = Path(st["state_dir"])
    for f in list(src.glob("*.log")) + list(src.glob("*.out")):
        shutil.copy2(f, dest / f.name)
    return dest


# -- the soak ----------------------------------------------------------------------------------

class Chaos:
    """Random failures on the lab ``st`` (``netns.status``), checked round by round."""

    def __init__(self, st: dict, seed: int, *, quiet_timeout: float = 20.0, confirm_s: float = 0.5,
                 max_failed: int = 3, heal_p: float = 0.4,
                 weights: tuple[float, float, float] = (0.4, 0.35, 0.25)):
        self.st, self.lab, self.seed = st, st["name"], seed
        self.rng = random.Random(seed)
        self.quiet_timeout, self.confirm_s = quiet_timeout, confirm_s
        self.max_failed, self.heal_p, self.weights = max_failed, heal_p, weights
        self.failed: dict[frozenset, tuple[str, str, str]] = {}  # link -> (kind, end, other)
        self.history: list[list[str]] = []  # the actions of each round, the current one too
        self.final = False
        self.records: list[dict] = []
        self.baseline = other_routes(st)

    # -- state -------------------------------------------------------------------------------

    def _links(self) -> list[tuple[str, str]]:
        return sorted((l["a"], l["b"]) for l in self.st["links"])

    def _ifname(self, node: str, peer: str) -> str:
        return ops._end(self.st, node, peer)[0]

    def _carrier_skip(self) -> dict[str, set[str]]:
        skip: dict[str, set[str]] = {}
        for kind, a, b in self.failed.values():
            if kind == "carrier":
                skip.setdefault(a, set()).add(self._ifname(a, b))
                skip.setdefault(b, set()).add(self._ifname(b, a))
        return skip

    def matches(self) -> bool:
        return actual_routes(self.st) == expected_routes(self.st, self.failed)

    # -- actions -----------------------------------------------------------------------------

    def _heal(self, link: frozenset) -> str:
        kind, a, b = self.failed.pop(link)
        if kind == "silent":
            ops.silent_failure(self.st, a, b, on=False)
        else:
            ops.carrier(self.st, a, b, up=True)
        return f"heal {kind} {a}-{b}"

    def _fail(self, kind: str) -> str | None:
        silent_ends = {a for k, a, _b in self.failed.values() if k == "silent"}
        choices = []
        for a, b in self._links():
            if _key(a, b) in self.failed:
                continue
            ends = [(a, b), (b, a)]
            if kind == "silent":
                ends = [e for e in ends if e[0] not in silent_ends]
            choices += ends
        if not choices:
            return None
        a, b = self.rng.choice(choices)
        if kind == "silent":
            ops.silent_failure(self.st, a, b, on=True)
        else:
            ops.carrier(self.st, a, b, up=False)
        self.failed[_key(a, b)] = (kind, a, b)
        return f"{kind} {a}-{b}"

    def _kill(self, node: str) -> str:
        old = next(n["pid"] for n in self.st["nodes"] if n["name"] == node)
        new_st = netns.restart(self.lab, node, kill=True)
        new = next(n for n in new_st["nodes"] if n["name"] == node)
        if new["pid"] == old or not new["alive"]:
            raise self._failure(f"restart of {node} gave pid {new['pid']} (was {old}, "
                                f"alive {new['alive']})")
        self.st = new_st
        return f"kill {node} (pid {old} -> {new['pid']})"

    # -- checks ------------------------------------------------------------------------------

    def _failure(self, what: str, diff: dict | None = None) -> ChaosFailure:
        where = "final check" if self.final else f"round {len(self.records) + 1}"
        msg = [f"chaos seed {self.seed}, {where}: {what}",
               f"failed links now: {self.failed_desc() or 'none'}",
               "actions so far:",
               *[f"  {'final' if i == len(self.history) - 1 and self.final else f'round {i + 1}'}: "
                 f"{'; '.join(a)}" for i, a in enumerate(self.history)]]
        if diff:
            msg.append("tables differing from the oracle ({node: {missing|extra|wrong: ...}}; "
                       "wrong = [oracle, kernel]):")
            msg += [f"  {n}: {json.dumps(d, sort_keys=True)}" for n, d in diff.items()]
        return ChaosFailure("\n".join(msg))

    def failed_desc(self) -> str:
        return ", ".join(f"{k} {a}-{b}" for k, a, b in sorted(self.failed.values()))

    def quiet(self) -> float | None:
        """Seconds from now until the tables matched the oracle (and kept matching for
        ``confirm_s``), or None after ``quiet_timeout``."""
        start = time.monotonic()
        deadline = start + self.quiet_timeout
        while True:
            if ops.wait(self.matches, max(0.0, deadline - time.monotonic())) is None:
                return None
            matched = time.monotonic()
            if ops.wait(lambda: not self.matches(), self.confirm_s) is None:
                return matched - start

    def _check(self, actions: list[str], action_s: float, full_routes: bool = False) -> dict:
        converge = self.quiet()
        if converge is None:
            want, have = expected_routes(self.st, self.failed), actual_routes(self.st)
            raise self._failure(f"tables never matched the oracle within {self.quiet_timeout:g} s "
                                f"after: {'; '.join(actions)}", route_diff(want, have))
        dead = [n["name"] for n in netns.status(self.lab)["nodes"] if not n["alive"]]
        if dead:
            raise self._failure(f"daemon(s) died: {', '.join(dead)}")
        skip = None if full_routes else self._carrier_skip()
        now = other_routes(self.st, skip)
        base = self.baseline if full_routes else other_routes_filtered(self.baseline, self.st, skip)
        changed = {n: {"gone": sorted(set(base[n]) - set(now[n])),
                       "new": sorted(set(now[n]) - set(base[n]))}
                   for n in now if now[n] != base[n]}
        if changed:
            raise self._failure(f"routes of other protocols changed: {json.dumps(changed)}")
        rec = {"round": len(self.records) + 1, "actions": actions, "action_s": round(action_s, 3),
               "converge_s": round(converge, 3), "failed": self.failed_desc(),
               "components": components(self.st, self.failed),
               "routes": sum(len(r) for r in actual_routes(self.st).values())}
        self.records.append(rec)
        return rec

    def round(self) -> dict:
        """One round: maybe heal one failed link, then one random action; then the quiet period
        and the checks.  Returns {"round", "actions", "action_s", "converge_s", "failed",
        "components", "routes"} (components: of the live graph, 1 when connected; routes: how
        many the tables hold in all)."""
        actions: list[str] = []
        self.history.append(actions)
        t0 = time.monotonic()
        if self.failed and (len(self.failed) >= self.max_failed or self.rng.random() < self.heal_p):
            actions.append(self._heal(self.rng.choice(sorted(self.failed, key=sorted))))
        kind = self.rng.choices(("silent", "carrier", "kill"), weights=self.weights)[0]
        done = self._fail(kind) if kind != "kill" else None
        if done is None:
            node = self.rng.choice(sorted(n["name"] for n in self.st["nodes"]))
            actions.append(f"kill {node}")
            actions[-1] = self._kill(node)
        else:
            actions.append(done)
        return self._check(actions, time.monotonic() - t0)

    def heal_all(self) -> dict:
        """Heal every failed link, then the quiet period and the checks, with every route of
        other protocols compared to the snapshot taken at the start."""
        actions: list[str] = []
        self.history.append(actions)
        self.final = True
        t0 = time.monotonic()
        for link in sorted(self.failed, key=sorted):
            actions.append(self._heal(link))
        actions = actions or ["nothing to heal"]
        self.history[-1] = actions
        return self._check(actions, time.monotonic() - t0, full_routes=True)


def other_routes_filtered(snapshot: dict, st: dict, skip: dict) -> dict:
    """``snapshot`` (from ``other_routes``) without the routes through an interface in ``skip``."""
    out = {}
    for name, routes in snapshot.items():
        leave = set(skip.get(name, ()))
        out[name] = [r for r in routes if json.loads(r).get("dev") not in leave]
    return out
