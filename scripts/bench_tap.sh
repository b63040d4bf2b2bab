#!/usr/bin/env bash
# Load benchmark of the tap (BENCHMARKS.md): an nginx origin serves a fixed 1 KB chat
# completion and a fixed SSE stream; wrk saturates (64 connections) direct, through semtap and
# through nginx `proxy_pass`, then examples/loadgen offers half of nginx's best saturated rate
# to each for latency. All side by side in one run, so ratios are comparable on a noisy machine.
#
# The nginx proxy runs as its own nginx (own master and workers), separate from the origin,
# as semtap is: a proxy that shares the origin's worker never sleeps between forwarding a
# request and reading the answer, which no sidecar can do. It runs twice: `worker_processes 1`
# and `auto` (one per core, Debian's default); the ratio is taken against the faster.
# examples/hyper_floor.rs runs beside them: the cheapest proxy hyper allows (no capture,
# metrics or analysis), which splits semtap's distance to nginx into hyper's share and semtap's.
#
#   ./scripts/bench_tap.sh [seconds-per-run]      (default 10)
#   SEMTAP_CONFIG=semantic-off.toml ./scripts/bench_tap.sh 5
#   SEMTAP_BIN=/path/to/another/semtap ./scripts/bench_tap.sh 5    (compare two builds)
#   LOADGEN_PACING=tokio ./scripts/bench_tap.sh 5    (the load generator's old 1 ms pacing)
set -euo pipefail
# Relative paths mean the caller's directory, not the repo root this cds into.
[ -n "${SEMTAP_BIN:-}" ] && SEMTAP_BIN="$(realpath "$SEMTAP_BIN")"
[ -n "${SEMTAP_CONFIG:-}" ] && SEMTAP_CONFIG="$(realpath "$SEMTAP_CONFIG")"
cd "$(dirname "$0")/.."
SECS="${1:-10}"
. scripts/lib.sh
need_debs nginx wrk
cargo build --release --quiet --bin semtap --example loadgen --example hyper_floor
TARGET="${CARGO_TARGET_DIR:-target}"
make_work

bench_payloads "$WORK"
mkdir -p "$WORK/www/v1/chat" "$WORK/www/v1/stream/chat"
cp "$WORK/chat.json" "$WORK/www/v1/chat/completions"
cp "$WORK/stream.sse" "$WORK/www/v1/stream/chat/completions"
chmod -R a+rX "$WORK"

nginx_origin nginx 18001
nginx_proxy nginx1 18002 1 18001
nginx_proxy nginxN 18005 auto 18001
nginx -c "$WORK/nginx.conf"
nginx -c "$WORK/nginx1.conf"
nginx -c "$WORK/nginxN.conf"
# SEMTAP_CONFIG=FILE runs semtap with that config (e.g. `[semantic] enabled = false` to
# measure the proxy without the engine); the flags below override its listener and upstream.
SEMTAP_BIN="${SEMTAP_BIN:-$TARGET/release/semtap}"
RUST_LOG=warn "$SEMTAP_BIN" run ${SEMTAP_CONFIG:+--config "$SEMTAP_CONFIG"} \
  --listen 127.0.0.1:18003 --upstream http://127.0.0.1:18001 --admin 127.0.0.1:18004 >"$WORK/semtap.log" 2>&1 &
echo $! > "$WORK/semtap.pid"
wait_ready http://127.0.0.1:18004 || { cat "$WORK/semtap.log" >&2; exit 1; }
start_hyper_floor 18006 18001

declare -A URL=([direct]=18001 [semtap]=18003 [floor]=18006 [nginx1]=18002 [nginxN]=18005)
WHO="direct semtap floor nginx1 nginxN"
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
local f = io.open(os.getenv("BODY"), "r"); wrk.body = f:read("*a"); f:close()
LUA

for who in $WHO; do
  for p in /v1/chat/completions /v1/stream/chat/completions; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' --data-binary @"$WORK/req.json" "http://127.0.0.1:${URL[$who]:-0}$p" || true)
    [ "$code" = 200 ] || { echo "sanity check failed: $who $p -> $code" >&2; cat "$WORK/nginx.log" >&2; exit 1; }
  done
done

# wrk at saturation; prints requests/s and, when pids are given, their CPU µs per request.
rps() {
  local c0 c1 out
  c0=$(cpu_s ${3:-})
  out=$(BODY="$2" wrk -t2 -c64 -d"${SECS}s" -s "$WORK/post.lua" "$1")
  c1=$(cpu_s ${3:-})
  python3 -c "import sys; r=float(sys.argv[1]); n=float(sys.argv[2]); print(f'{r:.0f}' + (f' ({(float(sys.argv[4])-float(sys.argv[3]))*1e6/n:.0f} µs)' if sys.argv[5] else ''))" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" "$(awk '/requests in/ {print $1}' <<<"$out")" "$c0" "$c1" "${3:-}"
}

SEMTAP_PID=$(cat "$WORK/semtap.pid")
ORIGIN_PIDS=$(pgrep -P "$(cat "$WORK/nginx.pid")" || true)
declare -A PROXY_PIDS=([direct]="" [semtap]="$SEMTAP_PID" [floor]="$(cat "$WORK/floor.pid")" [nginx1]="$(pgrep -P "$(cat "$WORK/nginx1.pid")" | tr '\n' ' ')" [nginxN]="$(pgrep -P "$(cat "$WORK/nginxN.pid")" | tr '\n' ' ')")

# Each proxy cell also gives the proxy's CPU per request at saturation, in brackets.
echo "| path | body | direct rps | semtap rps (CPU) | hyper floor rps (CPU) | nginx proxy_pass rps, 1 worker (CPU) | nginx proxy_pass rps, auto (CPU) | semtap / best nginx | floor / best nginx |"
echo "|---|---|---|---|---|---|---|---|---|"
declare -A SAT BEST
for kind in chat stream; do
  if [ $kind = chat ]; then p=/v1/chat/completions; b="$WORK/req.json"; else p=/v1/stream/chat/completions; b="$WORK/req_stream.json"; fi
  for who in $WHO; do SAT[$kind.$who]=$(rps "http://127.0.0.1:${URL[$who]}$p" "$b" "${PROXY_PIDS[$who]}"); done
  num() { echo "${1%% *}"; }
  BEST[$kind]=$(python3 -c "print(max($(num "${SAT[$kind.nginx1]}"), $(num "${SAT[$kind.nginxN]}")))")
  ratio=$(python3 -c "print(f'{$(num "${SAT[$kind.semtap]}")/${BEST[$kind]}:.2f}')")
  floor_ratio=$(python3 -c "print(f'{$(num "${SAT[$kind.floor]}")/${BEST[$kind]}:.2f}')")
  echo "| $p | $kind | ${SAT[$kind.direct]} | ${SAT[$kind.semtap]} | ${SAT[$kind.floor]} | ${SAT[$kind.nginx1]} | ${SAT[$kind.nginxN]} | $ratio | $floor_ratio |"
done
echo

# CPU per request is the steadier figure on a noisy machine: what the proxy spent (semtap's
# every thread, or the nginx proxy's workers) and what the origin's worker spent.
echo "| path | offered rps | target | achieved rps | p50 µs | p99 µs | p99.9 µs | errors | proxy CPU µs/request | origin CPU µs/request |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for kind in chat stream; do
  if [ $kind = chat ]; then p=/v1/chat/completions; b="$WORK/req.json"; else p=/v1/stream/chat/completions; b="$WORK/req_stream.json"; fi
  rate=$(python3 -c "print(int(${BEST[$kind]}/2))")
  for who in $WHO; do
    pp=${PROXY_PIDS[$who]}
    s0=$(cpu_s $pp); n0=$(cpu_s $ORIGIN_PIDS)
    out=$("$TARGET/release/examples/loadgen" --url "http://127.0.0.1:${URL[$who]}$p" --rate "$rate" --duration "$SECS" --connections 64 --body "$b" --pacing "${LOADGEN_PACING:-timerfd}")
    s1=$(cpu_s $pp); n1=$(cpu_s $ORIGIN_PIDS)
    python3 -c "import json,sys; d=json.loads(sys.argv[1]); n=max(1,d['requests']); us=lambda a,b: f'{(float(b)-float(a))*1e6/n:.0f}'; st=us(sys.argv[2],sys.argv[3]) if '$who'!='direct' else '–'; print(f\"| $p | $rate | $who | {d['achieved_rps']:.0f} | {d['p50_us']:.0f} | {d['p99_us']:.0f} | {d['p999_us']:.0f} | {d['errors']} | {st} | {us(sys.argv[4],sys.argv[5])} |\")" "$out" "$s0" "$s1" "$n0" "$n1"
  done
done
echo
# The floor under any proxy's added latency here: a proxy adds two wake-ups of a sleeping
# process to every request, and this is what one round trip of two such wake-ups costs.
if command -v perf >/dev/null; then
  echo "cross-process wake-up round trip (perf bench sched pipe): $(perf bench sched pipe -l 20000 2>/dev/null | awk '/usecs\/op/ {print $1}') µs"
fi
echo "semtap peak RSS: $(awk '/VmHWM/ {print $2, $3}' /proc/$(cat "$WORK/semtap.pid")/status)"
curl -s 127.0.0.1:18004/metrics | grep -E '^semtap_records_dropped_total|^semtap_requests_total' | head -5 || true
