"""Fuzz every decoder for a while: the targets of tests/unit/test_fuzz.py, longer.

Each target (a decoder, or the entry point whose contract says "never raises", with that
contract checked: see tests/unit/test_fuzz.py) runs for SECONDS_PER_TARGET (default 20) on a
seeded random loop: a quarter random bytes, half mutations of valid encodings, a quarter
structure-aware generated inputs (some of them mutated too).  Any exception out of a target is
a failure: the first input of each distinct failure (exception type and the line that raised)
is shrunk by a small delta-debugging pass and printed in hex with its traceback.  Per target:
inputs run, seconds, failures and the most frequent outcomes (how deep the inputs get).
Ends with one JSON line::

    {"targets": {"name": {"inputs": n, "seconds": s, "failures": 0}, ...}, "total_inputs": N}

Exit status 1 when any target failed.  Seeded (per target name): two runs of the same length
on the same code try the same inputs.  No hypothesis engine involved (the test module imports
it, so it must be installed: it is in the ``test`` extra); atheris is not used.

Usage: python bench/fuzz.py [SECONDS_PER_TARGET] [NAME_SUBSTRING ...]
"""

from __future__ import annotations

import json
import logging
import random
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402

from tests.unit.test_fuzz import TARGETS, RngChooser, Target, mutate  # noqa: E402

MINIMIZE_S = 3.0  # per distinct failure
MAX_SHOWN = 256  # bytes of a failing input printed in hex; longer ones go to a file
TB_LINES = 16  # last lines of a failure's traceback printed


def save(name: str, data: bytes) -> str:
    folder = Path(tempfile.gettempdir()) / "spines-kr-fuzz"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}-{zlib.crc32(data):08x}.bin"
    path.write_bytes(data)
    return f"{data[:32].hex()}... (all of it in {path})"


def one_input(rng: random.Random, ch: RngChooser, t: Target, corpus: list[bytes]) -> bytes:
    r = rng.random()
    if r < 0.25:
        return rng.randbytes(rng.choice([rng.randint(0, 24), rng.randint(0, t.max_size)]))
    if r < 0.75 or t.generate is None:
        return mutate(ch, rng.choice(corpus), corpus)
    data = t.generate(ch)
    return mutate(ch, data, corpus) if rng.random() < 0.3 else data


def signature(e: BaseException) -> tuple[str, str]:
    """The exception type and the innermost line of the project (or of the test) it came from."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if "spines_kr" in f.filename or "test_fuzz" in f.filename]
    where = (ours or frames)[-1] if frames else None
    line = f"{Path(where.filename).name}:{where.lineno}" if where else "?"
    return type(e).__name__, line


def fails_alike(t: Target, data: bytes, sig: tuple[str, str]) -> bool:
    try:
        t.run(data)
    except Exception as e:  # noqa: BLE001 - any exception is what we look for
        return signature(e) == sig
    return False


def minimize(t: Target, data: bytes, sig: tuple[str, str], budget: float = MINIMIZE_S) -> bytes:
    """Delete chunks (halves down to single bytes), then zero bytes, while it fails alike."""
    deadline = time.perf_counter() + budget
    chunk = max(1, len(data) // 2)
    while chunk >= 1 and time.perf_counter() < deadline:
        i, shrunk = 0, False
        while i < len(data) and time.perf_counter() < deadline:
            candidate = data[:i] + data[i + chunk:]
            if fails_alike(t, candidate, sig):
                data, shrunk = candidate, True
            else:
                i += chunk
        if not shrunk:
            chunk //= 2
    for i in range(len(data)):
        if time.perf_counter() >= deadline:
            break
        if data[i]:
            candidate = data[:i] + b"\0" + data[i + 1:]
            if fails_alike(t, candidate, sig):
                data = candidate
    return data


def fuzz(t: Target, seconds: float) -> dict:
    rng = random.Random(zlib.crc32(t.name.encode()))
    ch = RngChooser(rng)
    corpus = t.corpus()
    outcomes: Counter[str] = Counter()
    first: dict[tuple[str, str], tuple[bytes, str]] = {}
    n = failures = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        data = one_input(rng, ch, t, corpus)
        n += 1
        try:
            outcomes[t.run(data)] += 1
        except Exception as e:  # noqa: BLE001
            failures += 1
            sig = signature(e)
            if sig not in first:
                first[sig] = (data, traceback.format_exc())
    elapsed = time.perf_counter() - start
    top = ", ".join(f"{label} {count * 100 // max(n, 1)}%" for label, count in
                    outcomes.most_common(4))
    print(f"{t.name:<40} {n:>9} inputs {elapsed:7.1f} s {failures:>7} failures   {top}",
          flush=True)
    for sig, (data, tb) in first.items():
        again = fails_alike(t, data, sig)
        small = minimize(t, data, sig) if again else data
        shown = small.hex() if len(small) <= MAX_SHOWN else save(t.name, small)
        print(f"    FAILURE {sig[0]} at {sig[1]}: input ({len(data)} bytes, shrunk to "
              f"{len(small)}){'' if again else ' (FLAKY: passed when run again)'}: {shown}")
        try:
            t.run(small)
        except Exception:  # noqa: BLE001
            tb = traceback.format_exc()
        lines = tb.rstrip().splitlines()
        lines = lines[:1] + (["  ..."] if len(lines) > TB_LINES else []) + lines[1:][-TB_LINES:]
        print("      " + "\n      ".join(lines))
    return {"inputs": n, "seconds": round(elapsed, 2), "failures": failures}


def main(argv: list[str]) -> int:
    seconds = float(argv[1]) if len(argv) > 1 else 20.0
    wanted = argv[2:]
    # Decoders log what they skip; a fuzzer makes a lot of that.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    results = {}
    for name, t in TARGETS.items():
        if wanted and not any(w in name for w in wanted):
            continue
        if not t.available():
            print(f"{name:<40} skipped: not in this tree")
            continue
        results[name] = fuzz(t, seconds)
    print(json.dumps({"targets": results,
                      "total_inputs": sum(r["inputs"] for r in results.values())}))
    return 1 if any(r["failures"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
