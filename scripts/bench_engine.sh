#!/usr/bin/env bash
# The semantic engine under load (BENCHMARKS.md, issue 3): 256-token streaming answers at a fixed
# offered rate through two semtaps side by side in one run, one with the engine on (cheap checks
# and static tier on every answer, the live transformer tier on its sample) and one with it off,
# plus direct to the origin; then both saturated with wrk. Reports latency percentiles, the
# engine's lag, drops, RSS, and what share of answers got the static tier.
#
#   ./scripts/bench_engine.sh [rate] [seconds]      (defaults 2000 and 20)
#   ROUNDS=5 ./scripts/bench_engine.sh 2000 10      (interleaved rounds, median ratio: the
#                                                    machine is noisy; one round is one sample)
#   ENGINE_ON_CONFIG=file.toml ./scripts/bench_engine.sh   (a config for the engine-on semtap,
#                                                    e.g. `[semantic] transformer = false`;
#   ENGINE_ON_READY='tier ready'                       then say what its /status shows when
#                                                    ready: the default waits for the transformer)
set -euo pipefail
# A relative config path means the caller's directory, not the repo root this cds into.
[ -n "${ENGINE_ON_CONFIG:-}" ] && ENGINE_ON_CONFIG="$(realpath "$ENGINE_ON_CONFIG")"
cd "$(dirname "$0")/.."
RATE="${1:-2000}"
SECS="${2:-20}"
ROUNDS="${ROUNDS:-1}"
[ "$ROUNDS" -ge 1 ] 2>/dev/null || { echo "ROUNDS must be a whole number >= 1" >&2; exit 2; }
. scripts/lib.sh
need_debs nginx wrk
need_model
cargo build --release --quiet --bin semtap --example loadgen
TARGET="${CARGO_TARGET_DIR:-target}"
make_work

# A real paragraph of the demo's answers, repeated to 256 words, one SSE event per word.
python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
base = ("Tides are caused mainly by the difference in the Moon's gravitational pull across the width of the Earth. "
        "The side facing the Moon is pulled slightly more than the planet's center and the far side slightly less, "
        "which stretches the oceans into two bulges. As Earth rotates through those bulges, most coasts see two high "
        "tides and two low tides a little over every day. When the Sun and Moon line up at new and full moon their "
        "effects add to produce spring tides; at the quarter moons they partly cancel, giving neap tides.").split()
words = (base * 4)[:256]
ev = lambda d: "data: " + json.dumps(d) + "\n\n"
chunk = lambda delta, fin=None: {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18", "choices": [{"index": 0, "delta": delta, "finish_reason": fin}]}
out = [ev(chunk({"role": "assistant", "content": ""}))]
out += [ev(chunk({"content": w + " "})) for w in words]
out.append(ev(chunk({}, "stop")))
out.append(ev({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 256, "total_tokens": 268}}))
out.append("data: [DONE]\n\n")
open(f"{work}/stream.sse", "w").write("".join(out))
open(f"{work}/req.json", "w").write(json.dumps({"model": "gpt-4o-mini", "stream": True,
    "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "How do tides work?"}]}))
PY
mkdir -p "$WORK/www/v1/chat"
cp "$WORK/stream.sse" "$WORK/www/v1/chat/completions"
chmod -R a+rX "$WORK"
cat > "$WORK/nginx.conf" <<NGX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  types { }
  server {
    listen 127.0.0.1:18101;
    root $WORK/www;
    location /v1/chat/ { default_type text/event-stream; error_page 405 =200 \$uri; }
  }
}
NGX
nginx -c "$WORK/nginx.conf"

start_semtap() { # name port admin [env...]
  local name=$1 port=$2 admin=$3; shift 3
  env "$@" RUST_LOG=warn "$TARGET/release/semtap" run --listen "127.0.0.1:$port" \
    --upstream http://127.0.0.1:18101 --admin "127.0.0.1:$admin" --state-dir "$WORK/state-$name" \
    >"$WORK/semtap-$name.log" 2>&1 &
  echo $! > "$WORK/semtap-$name.pid"
}
start_semtap on 18103 18104 ${ENGINE_ON_CONFIG:+"SEMTAP_CONFIG=$ENGINE_ON_CONFIG"}
start_semtap off 18105 18106 SEMTAP_SEMANTIC=off
# Ready: the engine-on semtap's /status shows this (the transformer tier started, by default).
ready() { curl -s 127.0.0.1:18104/status | grep -qF "${ENGINE_ON_READY:-transformer tier on}"; }
for _ in $(seq 1 600); do
  ready && break
  sleep 0.5
done
ready || { echo "engine never became ready" >&2; cat "$WORK/semtap-on.log" >&2; exit 1; }

cat > "$WORK/report.py" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def total(name, needle=""):
    s = 0.0
    for line in text.splitlines():
        if line.startswith(name) and needle in line and not line.startswith(name + "_"):
            s += float(line.rsplit(" ", 1)[1])
    return s
def quantile(name, q):
    buckets = []
    for line in text.splitlines():
        m = re.match(name + r'_bucket\{.*le="([^"]+)".*\} (\S+)', line)
        if m:
            buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    want = q * buckets[-1][1]
    for le, c in buckets:
        if c >= want:
            return le
reqs = total("semtap_requests_total")
static = total("semtap_embeddings_total", 'tier="static"')
trans = total("semtap_embeddings_total", 'tier="transformer"')
print(f"engine-on semtap: {reqs:.0f} requests, {static:.0f} static-tier embeddings, {trans:.0f} transformer embeddings")
print("records dropped:", {l.split('reason="')[1].split('"')[0]: l.rsplit(" ", 1)[1] for l in text.splitlines() if l.startswith("semtap_records_dropped_total{")} or "none")
print(f"analysis lag p99 <= {quantile('semtap_semantic_lag_seconds', 0.99)} s (bucket bound), p50 <= {quantile('semtap_semantic_lag_seconds', 0.5)} s")
print(f"transformer review lag p99 <= {quantile('semtap_transformer_lag_seconds', 0.99)} s")
PY
# The engine-on semtap's counters, lag quantiles and both semtaps' memory so far.
report() {
  echo "--- $1"
  curl -s 127.0.0.1:18104/metrics > "$WORK/metrics.txt"
  python3 "$WORK/report.py" "$WORK/metrics.txt"
  for n in on off; do
    echo "engine-$n semtap RSS now $(awk '/VmRSS/ {print $2, $3}' /proc/$(cat "$WORK/semtap-$n.pid")/status), peak $(awk '/VmHWM/ {print $2, $3}' /proc/$(cat "$WORK/semtap-$n.pid")/status)"
  done
}

LG="$TARGET/release/examples/loadgen"
# Warm-up: baselines fill (200 answers per key) before anything is measured.
"$LG" --url http://127.0.0.1:18103/v1/chat/completions --rate 200 --duration 3 --connections 8 --body "$WORK/req.json" >/dev/null
"$LG" --url http://127.0.0.1:18105/v1/chat/completions --rate 200 --duration 3 --connections 8 --body "$WORK/req.json" >/dev/null

echo "| round | target | offered rps | achieved rps | p50 µs | p99 µs | p99.9 µs | errors |"
echo "|---|---|---|---|---|---|---|---|"
RATIOS=()
declare -A P99
for round in $(seq 1 "$ROUNDS"); do
  # Off and on swap places every round, so a drift of the machine's speed does not favour one.
  if [ $((round % 2)) = 1 ]; then order="direct:18101 engine-off:18105 engine-on:18103"; else order="direct:18101 engine-on:18103 engine-off:18105"; fi
  for who in $order; do
    name=${who%%:*}; port=${who##*:}
    out=$("$LG" --url "http://127.0.0.1:$port/v1/chat/completions" --rate "$RATE" --duration "$SECS" --connections 64 --body "$WORK/req.json")
    P99[$name]=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['p99_us'])" "$out")
    python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(f\"| $round | $name | $RATE | {d['achieved_rps']:.0f} | {d['p50_us']:.0f} | {d['p99_us']:.0f} | {d['p999_us']:.0f} | {d['errors']} |\")" "$out"
  done
  RATIOS+=("$(python3 -c "print(f'{${P99[engine-on]}/${P99[engine-off]}:.2f}')")")
done
echo
echo "p99 engine on / engine off, per round: ${RATIOS[*]}; median $(python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" "${RATIOS[@]}")"
sleep 2
report "after the fixed-rate runs"

cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BODY"), "r"); wrk.body = f:read("*a"); f:close()
LUA
rps() { BODY="$WORK/req.json" wrk -t2 -c64 -d"${SECS}s" -s "$WORK/post.lua" "$1" | awk '/Requests\/sec/ {print $2}'; }
off=$(rps http://127.0.0.1:18105/v1/chat/completions)
on=$(rps http://127.0.0.1:18103/v1/chat/completions)
echo
echo "saturation (wrk, 64 connections): engine off $off rps, engine on $on rps, on/off $(python3 -c "print(f'{$on/$off:.2f}')")"
sleep 2
echo
report "after saturation"

