#!/usr/bin/env bash
# Soak (issue 5): a steady offered load of streaming answers through the tap with every component
# on (semantic engine with the live transformer tier, OTLP export to a local receiver, a webhook
# receiver, state dir), sampled every few seconds: RSS, open file descriptors, queue depths,
# webhook spool and export queue. Every response body is checked against the upstream's SHA-256
# (zero bytes altered). Writes soak.csv, and soak.png if matplotlib is available.
#
#   ./scripts/soak.sh [seconds] [rate] [outdir]      (defaults 600, 200, soak-out)
#   SOAK_PROFILE=debug ./scripts/soak.sh 60 50 ...   (CI: reuses the test build, no release build)
#
# Exit status: non-zero if any body differed, any request failed, or RSS in the last third of the
# run grew more than 10% over the middle third (not flat).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-600}"
RATE="${2:-200}"
OUT="${3:-soak-out}"
SAMPLE=5
mkdir -p "$OUT"
. scripts/lib.sh
need_model
PROFILE="${SOAK_PROFILE:-release}"
if [ "$PROFILE" = release ]; then
  cargo build --release --quiet --bin semtap --example loadgen
else
  cargo build --quiet --bin semtap --example loadgen
  PROFILE=debug
fi
TARGET="${CARGO_TARGET_DIR:-target}/$PROFILE"
make_work

python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
words = ("A suspension bridge carries its deck on vertical hangers attached to main cables that drape "
         "between tall towers. The cables work purely in tension and carry the load to the towers and to "
         "massive anchorages at each end, which is why suspension bridges can span farther than any other type.").split()
ev = lambda d: "data: " + json.dumps(d) + "\n\n"
chunk = lambda delta, fin=None: {"id": "chatcmpl-soak", "object": "chat.completion.chunk", "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18", "choices": [{"index": 0, "delta": delta, "finish_reason": fin}]}
out = [ev(chunk({"role": "assistant", "content": ""}))] + [ev(chunk({"content": w + " "})) for w in words * 2]
out += [ev(chunk({}, "stop")), "data: [DONE]\n\n"]
open(f"{work}/stream.sse", "w").write("".join(out))
open(f"{work}/req.json", "w").write(json.dumps({"model": "gpt-4o-mini", "stream": True,
    "messages": [{"role": "user", "content": "How does a suspension bridge carry its load?"}]}))
PY
SHA=$(sha256sum "$WORK/stream.sse" | cut -d' ' -f1)
# OTLP/HTTP and webhook receivers: accept everything, count bytes.
cat > "$WORK/sink.py" <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
# The upstream: serves the fixed SSE answer (keep-alive) for every POST.
cat > "$WORK/upstream.py" <<'PY'
import http.server, sys
BODY = open(sys.argv[2], "rb").read()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$WORK/upstream.py" 18201 "$WORK/stream.sse" & echo $! > "$WORK/upstream.pid"
python3 "$WORK/sink.py" 18205 & echo $! > "$WORK/otlp.pid"
python3 "$WORK/sink.py" 18206 & echo $! > "$WORK/hook.pid"

cat > "$WORK/semtap.toml" <<TOML
state_dir = "$WORK/state"
[[listener]]
name = "soak"
listen = "127.0.0.1:18203"
upstream = "http://127.0.0.1:18201"
[admin]
listen = "127.0.0.1:18204"
[semantic]
model_dir = "models/all-MiniLM-L6-v2"
[otlp]
endpoint = "http://127.0.0.1:18205"
protocol = "http/protobuf"
metric_export_interval_ms = 5000
[[webhook]]
name = "soak"
url = "http://127.0.0.1:18206/hook"
secret_env = "SOAK_WEBHOOK_SECRET"
TOML
SOAK_WEBHOOK_SECRET=soak-secret RUST_LOG=warn "$TARGET/semtap" run --config "$WORK/semtap.toml" \
  >"$WORK/semtap.log" 2>&1 &
PID=$!
echo $PID > "$WORK/semtap.pid"
for _ in $(seq 1 600); do
  curl -s 127.0.0.1:18204/status | grep -q 'transformer tier on' && break
  sleep 0.5
done
curl -s 127.0.0.1:18204/status | grep -q 'transformer tier on' || { echo "engine never became ready" >&2; cat "$WORK/semtap.log" >&2; exit 1; }

"$TARGET/examples/loadgen" --url http://127.0.0.1:18203/v1/chat/completions --rate "$RATE" \
  --duration "$SECS" --connections 32 --body "$WORK/req.json" --expect-sha256 "$SHA" > "$OUT/loadgen.json" &
LOAD=$!

metric() { awk -v n="$1" 'index($1, n) == 1 && (length($1) == length(n) || substr($1, length(n) + 1, 1) == "{") {s += $2} END {print s + 0}' "$WORK/m.txt"; }
echo "t_s,rss_mb,fds,analysis_queue,semantic_queue,transformer_queue,export_queue,spool_depth,requests" > "$OUT/soak.csv"
T0=$(date +%s)
while kill -0 $LOAD 2>/dev/null; do
  curl -s 127.0.0.1:18204/metrics > "$WORK/m.txt" || true
  rss=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' /proc/$PID/status)
  fds=$(ls /proc/$PID/fd | wc -l)
  echo "$(( $(date +%s) - T0 )),$rss,$fds,$(metric semtap_analysis_queue_depth),$(metric semtap_semantic_queue_depth),$(metric semtap_transformer_queue_depth),$(metric semtap_export_queue_depth),$(metric semtap_webhook_spool_depth),$(metric semtap_requests_total)" >> "$OUT/soak.csv"
  sleep "$SAMPLE"
done
wait $LOAD || true
cat "$OUT/loadgen.json"
grep -E '^semtap_records_dropped_total|^semtap_export_dropped_total' "$WORK/m.txt" > "$OUT/drops.txt" || true

python3 - "$OUT" <<'PY'
import csv, json, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/soak.csv")))
load = json.load(open(f"{out}/loadgen.json"))
rss = [float(r["rss_mb"]) for r in rows]
n = len(rss)
mid = rss[n // 3: 2 * n // 3] or rss
last = rss[2 * n // 3:] or rss
growth = max(last) / max(mid) - 1 if mid and max(mid) > 0 else 0.0
fds = [int(r["fds"]) for r in rows]
verdict = {
    "requests": load["requests"], "errors": load["errors"], "body_mismatches": load["body_mismatches"],
    "rss_mb_min": min(rss), "rss_mb_max": max(rss), "rss_growth_last_vs_middle_third": round(growth, 4),
    "fds_min": min(fds), "fds_max": max(fds),
    "max_queue": {k: max(float(r[k]) for r in rows) for k in ("analysis_queue", "semantic_queue", "transformer_queue", "export_queue", "spool_depth")},
}
json.dump(verdict, open(f"{out}/verdict.json", "w"), indent=1)
print(json.dumps(verdict, indent=1))
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [float(r["t_s"]) for r in rows]
    fig, ax = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ax[0].plot(t, rss); ax[0].set_ylabel("RSS (MB)"); ax[0].set_ylim(0, max(rss) * 1.25)
    ax[1].plot(t, fds); ax[1].set_ylabel("open fds"); ax[1].set_ylim(0, max(fds) * 1.25)
    for k in ("analysis_queue", "semantic_queue", "transformer_queue", "export_queue", "spool_depth"):
        ax[2].plot(t, [float(r[k]) for r in rows], label=k)
    ax[2].set_ylabel("depth"); ax[2].set_xlabel("seconds"); ax[2].legend(fontsize=7)
    fig.suptitle(f"semtap soak: {load['requests']} streamed answers, {load['body_mismatches']} altered, {load['errors']} errors")
    fig.tight_layout(); fig.savefig(f"{out}/soak.png", dpi=80)
    print(f"plot: {out}/soak.png")
except ImportError:
    print("matplotlib not installed: no plot (pip install matplotlib)")
bad = load["errors"] > 0 or load["body_mismatches"] > 0 or growth > 0.10
sys.exit(1 if bad else 0)
PY
