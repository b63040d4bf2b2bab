#!/usr/bin/env python3
"""Runs `semtap replay` on the streams eval/build_eval.py wrote and scores what it found.

  python3 eval/score.py --bin target/release/semtap --model-dir models/all-MiniLM-L6-v2

Replay output goes to eval/out/ (not committed); the scores to eval/results/results.json and
eval/results/results.md (committed). Python 3 stdlib only; AUROC by rank statistics.
"""

import argparse
import concurrent.futures
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
OUT = os.path.join(HERE, "out")
RESULTS = os.path.join(HERE, "results")

FLAGS = ["blank", "refusal", "repetition", "garbled", "error_text", "truncated", "off_topic",
         "outlier", "length"]
CHEAP = ["blank", "refusal", "repetition", "garbled", "error_text", "truncated"]
WARMUP = 200  # the engine's default baseline size: no embedding score before it


# The kinds where the answer's own text changes, the set the prototype measured the
# outlier AUROC on (garbled, error text, refusal, loops, non-English).
TEXT_KINDS = ("garbled", "error_text", "refusal", "repetition", "non_english")


def replay(binary, model_dir, tier, stream, reuse):
    src = os.path.join(DATA, f"{stream}.jsonl")
    dst = os.path.join(OUT, f"{stream}.{tier}.jsonl")
    log = os.path.join(OUT, f"{stream}.{tier}.summary.json")
    if reuse and os.path.exists(dst) and os.path.exists(log):
        return json.load(open(log))
    cmd = [binary, "replay", src, "--out", dst, "--tier", tier, "--model-dir", model_dir]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"replay failed ({r.returncode}):\n{r.stderr}")
    err = r.stderr
    summary = json.loads(err[err.index("{"):])
    summary["wall_s"] = round(wall, 1)
    summary["records_per_s"] = round(summary["records"] / wall, 1)
    with open(log, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"  {summary['records']} records in {wall:.1f} s", file=sys.stderr, flush=True)
    return summary


def read_out(stream, tier):
    ex, inc = {}, []
    with open(os.path.join(OUT, f"{stream}.{tier}.jsonl"), encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            if v["type"] == "exchange":
                ex[v["id"]] = v
            else:
                inc.append(v)
    return ex, inc


def auroc(neg, pos):
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    if not neg or not pos:
        return None
    allv = sorted([(s, 0) for s in neg] + [(s, 1) for s in pos])
    ranks = [0.0] * len(allv)
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1][0] == allv[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    rpos = sum(r for r, (_, lab) in zip(ranks, allv) if lab == 1)
    u = rpos - len(pos) * (len(pos) + 1) / 2
    return u / (len(pos) * len(neg))


def poisson_cdf(k, mu):
    term, s = math.exp(-mu), 0.0
    for i in range(k + 1):
        if i:
            term *= mu / i
        s += term
    return s


def poisson_ci(k, conf=0.95):
    """Exact (Garwood) two-sided interval for a Poisson mean; upper one at 97.5%."""
    a = (1 - conf) / 2

    def solve(f, lo, hi):
        for _ in range(200):
            mid = (lo + hi) / 2
            if f(mid):
                hi = mid
            else:
                lo = mid
        return (lo + hi) / 2

    lo = 0.0 if k == 0 else solve(lambda m: 1 - poisson_cdf(k - 1, m) >= a, 0.0, k + 50.0)
    hi = solve(lambda m: poisson_cdf(k, m) <= a, 0.0, k * 3 + 50.0)
    return lo, hi


def wilson(k, n, z=1.96):
    if n == 0:
        return None
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, c - h), 3), round(min(1.0, c + h), 3)]


def score_anomalies(tier, stream="anomalies"):
    ex, inc = read_out(stream, tier)
    labels = [json.loads(x) for x in open(os.path.join(DATA, f"{stream}.labels.jsonl"))]
    text = {}
    with open(os.path.join(DATA, f"{stream}.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            text[r["id"]] = r["response"]
    res = {"per_flag": {}, "per_kind": {}, "auroc": {}, "incidents": {}}
    normal = [lab for lab in labels if lab["kind"] == "normal"]
    injected = [lab for lab in labels if lab["kind"] != "normal"]
    for flag in FLAGS:
        pos = [lab for lab in labels if lab["expected_flag"] == flag]
        fl = [lab for lab in labels if flag in ex[lab["id"]]["flags"]]
        tp = sum(1 for lab in fl if lab["expected_flag"] == flag)
        any_inj = sum(1 for lab in fl if lab["kind"] != "normal")
        fp_norm = sum(1 for lab in fl if lab["kind"] == "normal")
        res["per_flag"][flag] = {
            "injected": len(pos), "flagged": len(fl), "tp": tp,
            "precision": round(tp / len(fl), 3) if fl else None,
            "precision_any_anomaly": round(any_inj / len(fl), 3) if fl else None,
            "recall": round(tp / len(pos), 3) if pos else None,
            "recall_ci95": wilson(tp, len(pos)),
            "false_on_normal": fp_norm,
            "false_on_normal_distinct_texts": len({text[lab["id"]] for lab in fl
                                                   if lab["kind"] == "normal"}),
            "false_rate_on_normal": round(fp_norm / len(normal), 4),
        }
    for kind in sorted({lab["kind"] for lab in injected}):
        rows = [lab for lab in injected if lab["kind"] == kind]
        exp = rows[0]["expected_flag"]
        subs = {}
        for lab in rows:
            s = subs.setdefault(lab["sub"], {"n": 0, "expected_flag": 0, "any_flag": 0})
            s["n"] += 1
            s["expected_flag"] += exp in ex[lab["id"]]["flags"]
            s["any_flag"] += bool(ex[lab["id"]]["flags"])
        res["per_kind"][kind] = {
            "n": len(rows), "expected_flag": exp,
            "caught_by_expected": sum(exp in ex[lab["id"]]["flags"] for lab in rows),
            "caught_by_any_flag": sum(bool(ex[lab["id"]]["flags"]) for lab in rows),
            "flags_seen": count_flags(ex, rows),
            "subkinds": subs,
        }
    # AUROC: normal answers past warm-up vs each injected kind, on answers that have a score.

    def outlier(e):
        return e["scores"].get("outlier")

    def conformal_max(e):
        v = [e["scores"][k] for k in ("outlier", "length", "off_topic") if k in e["scores"]]
        return max(v) if v else None

    def combined(e):
        c = conformal_max(e)
        if c is None:
            return None
        return c + (1.0 if any(f in e["flags"] for f in CHEAP) else 0.0)

    def off_topic(e):
        return e["scores"].get("off_topic")

    scorers = {"outlier": outlier, "off_topic": off_topic,
               "max(outlier,length,off_topic)": conformal_max,
               "combined(cheap flag, then max conformal)": combined}
    for name, fn in scorers.items():
        neg = [fn(ex[lab["id"]]) for lab in normal]
        neg = [s for s in neg if s is not None]
        table = {"normal_scored": len(neg)}
        allpos, contentpos, textpos = [], [], []
        for kind in sorted({lab["kind"] for lab in injected}):
            pos = [fn(ex[lab["id"]]) for lab in injected if lab["kind"] == kind]
            pos = [s for s in pos if s is not None]
            table[kind] = {"n_scored": len(pos), "auroc": r3(auroc(neg, pos))}
            allpos += pos
            if kind not in ("truncated",):
                contentpos += pos
            if kind in TEXT_KINDS:
                textpos += pos
        table["all_scored"] = {"n_scored": len(allpos), "auroc": r3(auroc(neg, allpos))}
        table["all_but_truncated"] = {"n_scored": len(contentpos),
                                      "auroc": r3(auroc(neg, contentpos))}
        table["text_kinds"] = {"n_scored": len(textpos), "auroc": r3(auroc(neg, textpos))}
        res["auroc"][name] = table
    for i in inc:
        if i["state"] == "opened":
            res["incidents"][i["kind"]] = res["incidents"].get(i["kind"], 0) + 1
    return res


def r3(x):
    return None if x is None else round(x, 3)


def count_flags(ex, rows):
    c = {}
    for lab in rows:
        for f in ex[lab["id"]]["flags"]:
            c[f] = c.get(f, 0) + 1
    return c


def score_drift(tier, stream="drift"):
    ex, inc = read_out(stream, tier)
    meta = json.load(open(os.path.join(DATA, f"{stream}.labels.json")))
    res = {}
    for name, m in meta.items():
        key_model = m["key_model"]
        onset = m["onset_index"]
        opened = [i for i in inc if i["state"] == "opened" and f"/{key_model}" in i["key"]]
        rows = []
        for i in opened:
            idx = int(i["exchange_id"].rsplit("-", 1)[1])
            rows.append({"kind": i["kind"], "index": idx, "monitor": i["evidence"]["monitor"],
                         "after_onset": idx - onset + 1 if idx >= onset else None})
        want = "blank_rate" if name == "blank_rate_ramp" else "drift"
        det = [r for r in rows if r["kind"] == want and r["after_onset"] is not None]
        res[name] = {
            "description": m["description"], "onset_index": onset, "records": m["records"],
            "detected_kind": want,
            "delay_responses": det[0]["after_onset"] if det else None,
            "detected_by": det[0]["monitor"] if det else None,
            "before_onset": [r for r in rows if r["after_onset"] is None],
            "opened": rows,
        }
    return res


def score_stationary(tier):
    stream = f"stationary_{tier}"
    ex, inc = read_out(stream, tier)
    per_key = {}
    for e in ex.values():
        per_key[e["key"]] = per_key.get(e["key"], 0) + 1
    exposure = sum(max(0, n - WARMUP) for n in per_key.values())
    kinds = {}
    for i in inc:
        if i["state"] == "opened":
            kinds[i["kind"]] = kinds.get(i["kind"], 0) + 1
    total = sum(kinds.values())
    drift = kinds.get("drift", 0)

    def rate(k):
        lo, hi = poisson_ci(k)
        s = 1e5 / exposure
        return {"count": k, "per_100k": round(k * s, 3),
                "ci95_per_100k": [round(lo * s, 3), round(hi * s, 3)]}

    return {"responses": len(ex), "keys": len(per_key),
            "exposure_after_warmup": exposure, "by_kind": kinds,
            "all_incidents": rate(total), "drift_incidents": rate(drift)}


def md_tables(results):
    lines = []
    tiers = results["tiers"]
    for stream in ("anomalies", "anomalies_lowrate", "anomalies_small"):
        have = [t for t in tiers if stream in tiers[t]]
        if have:
            lines += md_anomalies(results, stream, have)
    for stream in ("drift", "drift_small"):
        have = [t for t in tiers if stream in tiers[t]]
        if have:
            lines += md_drift(results, stream, have)
    lines.append("\n### False incidents on stationary traffic\n")
    lines.append("| tier | keys | responses (after warm-up) | incidents by kind | "
                 "all per 100k (95% CI) | drift per 100k (95% CI) |")
    lines.append("|---|---|---|---|---|---|")
    for t in tiers:
        s = tiers[t].get("stationary")
        if not s:
            continue
        a, d = s["all_incidents"], s["drift_incidents"]
        lines.append(f"| {t} | {s['keys']} | {s['responses']} ({s['exposure_after_warmup']}) | "
                     f"{json.dumps(s['by_kind']) if s['by_kind'] else 'none'} | "
                     f"{a['per_100k']} ({a['ci95_per_100k'][0]}–{a['ci95_per_100k'][1]}) | "
                     f"{d['per_100k']} ({d['ci95_per_100k'][0]}–{d['ci95_per_100k'][1]}) |")
    lines.append("\n### Runtime\n")
    lines.append("| tier | stream | records | wall s | records/s |")
    lines.append("|---|---|---|---|---|")
    for t in tiers:
        for stream, s in tiers[t]["runs"].items():
            lines.append(f"| {t} | {stream} | {s['records']} | {s['wall_s']} | "
                         f"{s['records_per_s']} |")
    return "\n".join(lines) + "\n"


def md_anomalies(results, stream, tiers):
    T = results["tiers"]
    lines = [f"\n## Stream `{stream}`\n", "### Flags (strict precision / recall)\n"]
    lines.append("| flag | tier | injected | flagged | precision | precision (any anomaly) | "
                 "recall (95% CI) | false on normal (distinct texts) |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for flag in FLAGS:
        for t in tiers:
            p = T[t][stream]["per_flag"][flag]
            ci = p["recall_ci95"]
            rec = fmt(p["recall"]) + (f" ({ci[0]}–{ci[1]})" if ci else "")
            lines.append(f"| {flag} | {t} | {p['injected']} | {p['flagged']} | "
                         f"{fmt(p['precision'])} | {fmt(p['precision_any_anomaly'])} | {rec} | "
                         f"{p['false_on_normal']} ({p['false_on_normal_distinct_texts']}) |")
    lines.append("\n### Recall by injected kind and variant\n")
    lines.append("| kind | variant | expected flag | " + " | ".join(
        f"{t}: by expected flag | {t}: by any flag" for t in tiers) + " |")
    lines.append("|---|---|---|" + "---|" * (2 * len(tiers)))
    a0 = T[tiers[0]][stream]["per_kind"]
    for kind, v in a0.items():
        for sub in sorted(v["subkinds"]):
            cells = []
            for t in tiers:
                s = T[t][stream]["per_kind"][kind]["subkinds"][sub]
                cells += [f"{s['expected_flag']}/{s['n']}", f"{s['any_flag']}/{s['n']}"]
            lines.append(f"| {kind} | {sub} | {v['expected_flag']} | " + " | ".join(cells) + " |")
    lines.append("\n### AUROC, normal answers vs each injected kind (answers with a score)\n")
    names = list(T[tiers[0]][stream]["auroc"])
    lines.append("| kind | " + " | ".join(f"{t}: {n}" for t in tiers for n in names) + " |")
    lines.append("|---|" + "---|" * (len(tiers) * len(names)))
    kinds = [k for k in T[tiers[0]][stream]["auroc"][names[0]] if k != "normal_scored"]
    for k in kinds:
        cells = []
        for t in tiers:
            for n in names:
                v = T[t][stream]["auroc"][n][k]
                cells.append(f"{fmt(v['auroc'])} (n={v['n_scored']})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    neg = ", ".join(f"{t}: {T[t][stream]['auroc'][names[0]]['normal_scored']}" for t in tiers)
    lines.append(f"\nNormal answers with a score: {neg}. Incidents opened: " + "; ".join(
        f"{t}: {json.dumps(T[t][stream]['incidents']) if T[t][stream]['incidents'] else 'none'}"
        for t in tiers) + ".")
    return lines


def md_drift(results, stream, tiers):
    T = results["tiers"]
    lines = [f"\n## Drift stream `{stream}`: detection delay (responses of the key after onset)\n"]
    lines.append("| segment | onset / records | tier | delay | monitor | opened before onset | "
                 "all opened (kind@index) |")
    lines.append("|---|---|---|---|---|---|---|")
    for seg, d0 in T[tiers[0]][stream].items():
        for t in tiers:
            d = T[t][stream][seg]
            lines.append(
                f"| {seg} | {d0['onset_index']} / {d0['records']} | {t} | "
                f"{d['delay_responses'] if d['delay_responses'] else 'not detected'} | "
                f"{d['detected_by'] or '-'} | "
                f"{', '.join(r['kind'] + '@' + str(r['index']) for r in d['before_onset']) or 'none'} | "
                f"{', '.join(r['kind'] + '@' + str(r['index']) for r in d['opened']) or 'none'} |")
    return lines


def fmt(x):
    return "–" if x is None else f"{x:.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.environ.get("SEMTAP", "target/release/semtap"))
    ap.add_argument("--model-dir", default="models/all-MiniLM-L6-v2")
    ap.add_argument("--tiers", default="static,transformer")
    ap.add_argument("--streams", default="anomalies,drift,stationary")
    ap.add_argument("--reuse", action="store_true", help="keep replay outputs already in eval/out")
    ap.add_argument("--jobs", type=int, default=1, help="replays run at the same time")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(RESULTS, exist_ok=True)
    rpath = os.path.join(RESULTS, "results.json")
    jobs = [(tier, stream, f"stationary_{tier}" if stream == "stationary" else stream)
            for tier in args.tiers.split(",") for stream in args.streams.split(",")]
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(lambda j: replay(args.bin, args.model_dir, j[0], j[2], args.reuse),
                             jobs))
    # merged into what earlier runs found (other tiers, other streams)
    results = json.load(open(rpath)) if os.path.exists(rpath) else {"tiers": {}}
    results["build"] = json.load(open(os.path.join(DATA, "build_meta.json")))
    for (tier, stream, name), summary in zip(jobs, done):
        t = results["tiers"].setdefault(tier, {"runs": {}})
        t["runs"][name] = summary
        if stream.startswith("anomalies"):
            t[stream] = score_anomalies(tier, stream)
        elif stream.startswith("drift"):
            t[stream] = score_drift(tier, stream)
        elif stream == "stationary":
            t["stationary"] = score_stationary(tier)
        else:
            sys.exit(f"unknown stream {stream}")
    with open(rpath, "w") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
    md = md_tables(results)
    with open(os.path.join(RESULTS, "results.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
