"""Chaos soak benchmark: the 10-node ring with 4 chords of ``tests/lab/chaos.py``, real daemons,
ROUNDS rounds (default 40) of random silent link failures, carrier losses and SIGKILL + restarts
(seeded: SEED, default random, printed).  Every round ends when every node's kernel table equals
the oracle's (networkx on the live links) and kept matching for half a second; each daemon must
be alive and no route of another protocol changed.  Then every failure is healed and checked.

Prints each round's actions and convergence time (from the end of the action, e.g. once a
restarted daemon accepts connections, to the first of the matching tables) and ends with one
JSON line: {"rounds", "seed", "all_matched", "median_converge_s", "max_converge_s", ...}.
A failing round prints what differed, keeps the daemons' logs and exits 1.

Usage (root): python bench/chaos.py [ROUNDS] [SEED]
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spines_kr.lab import netns, ops  # noqa: E402
from tests.lab import chaos  # noqa: E402  (networkx: a test dependency)


def main() -> int:
    if os.geteuid() != 0:
        print("bench/chaos.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else secrets.randbits(32)
    lab = f"skchaos{secrets.token_hex(3)}"
    print(f"chaos: lab {lab}, {rounds} rounds, seed {seed}", flush=True)
    out = {"rounds": 0, "seed": seed, "all_matched": False}
    run = None
    t0 = time.monotonic()
    try:
        st = netns.up(chaos.topology(), lab)
        first = ops.wait(lambda: chaos.actual_routes(st) == chaos.expected_routes(st), 60)
        if first is None:
            print("initial convergence failed:",
                  json.dumps(chaos.route_diff(chaos.expected_routes(st), chaos.actual_routes(st))))
            print(json.dumps(out))
            return 1
        print(f"initial convergence {first:.3f} s after the daemons were ready", flush=True)
        chaos.add_foreign_routes(st)
        run = chaos.Chaos(st, seed)
        for _ in range(rounds):
            r = run.round()
            print(f"round {r['round']:3d}: {'; '.join(r['actions']):48s} action {r['action_s']:6.3f} s, "
                  f"converged {r['converge_s']:6.3f} s, {r['routes']} routes, failed now: "
                  f"{r['failed'] or 'none'}"
                  + (f" (PARTITIONED: {r['components']} pieces)" if r["components"] > 1 else ""),
                  flush=True)
        final = run.heal_all()
        print(f"final: {'; '.join(final['actions'])}: converged {final['converge_s']:.3f} s",
              flush=True)
    except chaos.ChaosFailure as e:
        print(f"FAILED: {e}")
        if run is not None:
            logs = chaos.save_logs(run.st, tempfile.mkdtemp(prefix=f"{lab}-logs-"))
            print(f"daemon logs copied to {logs}")
        out["rounds"] = len(run.records) if run else 0
        print(json.dumps(out))
        return 1
    finally:
        report = netns.down(lab)
        if report["problems"]:
            print(f"lab down: problems: {report['problems']}", file=sys.stderr)
    recs = run.records[:-1]
    conv = [r["converge_s"] for r in recs]
    by_kind = {}
    for r in recs:
        kind = r["actions"][-1].split()[0]
        by_kind.setdefault(kind, []).append(r["converge_s"])
    for kind, ts in sorted(by_kind.items()):
        print(f"{kind:8s} {len(ts):3d} rounds: median {statistics.median(ts):.3f} s, "
              f"max {max(ts):.3f} s")
    print(f"{len(recs)} rounds in {time.monotonic() - t0:.1f} s, every table equal to the "
          f"oracle's after each; median convergence {statistics.median(conv):.3f} s, max "
          f"{max(conv):.3f} s")
    out.update(rounds=len(recs), all_matched=True,
               median_converge_s=round(statistics.median(conv), 3),
               max_converge_s=round(max(conv), 3),
               **{f"median_{k}_s": round(statistics.median(v), 3) for k, v in sorted(by_kind.items())},
               partitioned_rounds=sum(r["components"] > 1 for r in recs),
               final_heal_s=final["converge_s"])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
