"""Graphviz pictures of the overlay as one node sees it (``spines-kr show topology --dot``).

Input: the ``show topology`` view (``{"self", "nodes": [{"id", ...}], "links": [{"from", "to",
"cost"}]}``).  Output: DOT text: one undirected edge per node pair, labelled with its cost
(both directions' costs when they differ), this node filled, and the edges of its
shortest-path tree drawn bold (the same tree ``routing.groups.tree_parents`` computes).
Rendering to PNG is Graphviz's ``dot -Tpng``, run by the CLI when it is installed.
"""

from __future__ import annotations

import ipaddress

from spines_kr.routing.groups import tree_parents


def _id(a: str) -> int:
    return int(ipaddress.IPv4Address(a))


def to_dot(topo: dict) -> str:
    me = topo["self"]
    graph: dict[int, dict[int, int]] = {}
    cost: dict[tuple[str, str], int] = {}
    for l in topo["links"]:
        graph.setdefault(_id(l["from"]), {})[_id(l["to"])] = l["cost"]
        cost[(l["from"], l["to"])] = l["cost"]
    parents = tree_parents(graph, _id(me))
    tree = {frozenset((str(ipaddress.IPv4Address(c)), str(ipaddress.IPv4Address(p))))
            for c, p in parents.items()}
    lines = ["graph overlay {", '  graph [label="spines-kr overlay seen from %s", labelloc=t];' % me,
             '  node [shape=box, style="rounded,filled", fillcolor=white, fontname=Helvetica];',
             '  edge [fontname=Helvetica, color=gray40];']
    for n in topo["nodes"]:
        fill = ', fillcolor="#9ecae1"' if n["id"] == me else ""
        lines.append(f'  "{n["id"]}" [label="{n["id"]}"{fill}];')
    done = set()
    for (a, b), c in sorted(cost.items()):
        pair = frozenset((a, b))
        if pair in done:
            continue
        done.add(pair)
        back = cost.get((b, a))
        label = str(c) if back in (None, c) else f"{c} / {back}"
        style = ", penwidth=3, color=black" if pair in tree else ""
        lines.append(f'  "{a}" -- "{b}" [label="{label}"{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"
