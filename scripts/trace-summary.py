#!/usr/bin/env python3
"""Summarizes a `doppler ... --trace FILE` timeline: per decode step (a one-token "forward" span), the median time
each thread spent in each kind of span inside the step, clipped to it.

Usage: scripts/trace-summary.py TRACE.json [--all]   (--all: the prefill forwards too)
"""
import json
import statistics
import sys
from collections import defaultdict


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        sys.exit(__doc__)
    with open(args[0]) as f:
        events = json.load(f)["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
    spans = [e for e in events if e["ph"] == "X"]
    forwards = [e for e in spans if e["name"] == "forward" and ("--all" in sys.argv or e["args"].get("tokens") == 1)]
    if not forwards:
        sys.exit("no decode steps (one-token forward spans) in the trace")
    per = defaultdict(list)  # (thread, span name) -> time inside each step, ms
    steps = []
    for fw in forwards:
        t0, t1 = fw["ts"], fw["ts"] + fw["dur"]
        steps.append(fw["dur"] / 1e3)
        inside = defaultdict(float)
        for e in spans:
            if e is fw or e["name"] in ("forward",):
                continue
            a, b = max(t0, e["ts"]), min(t1, e["ts"] + e["dur"])
            if b > a:
                inside[(names.get(e["tid"], str(e["tid"])), e["name"])] += (b - a) / 1e3
        # The main thread's time in no traced span: issuing GPU work, routing, bookkeeping.
        inside[("main", "(untraced)")] = fw["dur"] / 1e3 - sum(
            v for (th, n), v in inside.items() if th == "main" and n != "layer")
        for k in set(per) | set(inside):
            per[k].append(inside.get(k, 0.0))
    print(f"{len(forwards)} steps, median {statistics.median(steps):.3f} ms "
          f"(min {min(steps):.3f}, max {max(steps):.3f})")
    print(f"{'thread':<14}{'span':<24}{'median ms':>10}{'mean ms':>10}{'max ms':>10}")
    for (thread, name), v in sorted(per.items(), key=lambda kv: (kv[0][0] != "main", kv[0])):
        v = v + [0.0] * (len(forwards) - len(v))
        print(f"{thread:<14}{name:<24}{statistics.median(v):>10.3f}{statistics.mean(v):>10.3f}{max(v):>10.3f}")


if __name__ == "__main__":
    main()
