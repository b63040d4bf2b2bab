#!/usr/bin/env python3
"""Incidents opened in a replay output of stationary traffic, per 100k responses after each
key's 200-answer warm-up, with an exact (Garwood) Poisson 95% interval.

usage: python3 eval/count_incidents.py OUT.jsonl
"""
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from score import WARMUP, poisson_ci  # noqa: E402


def main(path):
    per_key = collections.Counter()
    opened = collections.Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            if v["type"] == "exchange":
                per_key[v.get("key", "?")] += 1
            elif v.get("state") == "opened":
                opened[v["kind"]] += 1
    after = sum(max(0, n - WARMUP) for n in per_key.values())
    k = sum(opened.values())
    lo, hi = poisson_ci(k)
    scale = 100_000 / after if after else float("nan")
    print(json.dumps({"keys": len(per_key), "responses": sum(per_key.values()),
                      "after_warmup": after, "incidents": dict(opened),
                      "per_100k": round(k * scale, 3),
                      "ci95_per_100k": [round(lo * scale, 3), round(hi * scale, 3)]}))


if __name__ == "__main__":
    main(sys.argv[1])
