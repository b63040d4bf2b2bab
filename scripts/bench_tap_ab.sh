#!/usr/bin/env bash
# Interleaved A/B of semtap builds at saturation (BENCHMARKS.md): an nginx origin serves a fixed
# 1 KB chat completion; each round runs wrk (2 threads, 64 connections) through every build
# given, then through the hyper floor (examples/hyper_floor.rs: the cheapest proxy hyper
# allows, no semtap logic), then through nginx proxy_pass (its own nginx, 1 worker), and
# prints requests/s and the proxy's CPU per request. On a noisy machine one run is one sample:
# compare builds within a round, and the medians over rounds.
#
#   ROUNDS=6 SECS=4 ./scripts/bench_tap_ab.sh OLD_BIN NEW_BIN [more builds]
#   SEMTAP_CONFIG=off.toml ...     (the config every build runs with; default: engine off)
#   FLOOR=0 ...                    (leave the hyper floor out)
#   REQ_PATH=/v1/chat/plain ...    (a path semtap does not recognise: plain passthrough, no
#                                   capture or analysis; default /v1/chat/completions)
#   RATE=3000 ...                  (latency instead of throughput: examples/loadgen offers
#                                   RATE requests/s to each, and to the origin directly; cells
#                                   are p50 and p99 in µs, the summary the added medians)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 SEMTAP_BIN [SEMTAP_BIN...]" >&2; exit 2; }
BINS=()
for b in "$@"; do BINS+=("$(realpath "$b")"); done
[ -n "${SEMTAP_CONFIG:-}" ] && SEMTAP_CONFIG="$(realpath "$SEMTAP_CONFIG")"
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_debs nginx wrk
ROUNDS="${ROUNDS:-6}"; SECS="${SECS:-4}"; RATE="${RATE:-}"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive integer" >&2; exit 2; }
[ -z "$RATE" ] || [[ "$RATE" =~ ^[1-9][0-9]*$ ]] || { echo "RATE must be a positive integer" >&2; exit 2; }
TARGET="${CARGO_TARGET_DIR:-target}"
make_work
if [ -z "${SEMTAP_CONFIG:-}" ]; then
  printf '[semantic]\nenabled = false\n' > "$WORK/off.toml"
  SEMTAP_CONFIG="$WORK/off.toml"
fi
mkdir -p "$WORK/www/v1/chat"
bench_payloads "$WORK"
cp "$WORK/chat.json" "$WORK/www/v1/chat/completions"
cp "$WORK/chat.json" "$WORK/www/v1/chat/plain"
REQ_PATH="${REQ_PATH:-/v1/chat/completions}"
chmod -R a+rX "$WORK"
nginx_origin origin 18101
nginx_proxy proxy 18102 1 18101
nginx -c "$WORK/origin.conf"
nginx -c "$WORK/proxy.conf"
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
local f = io.open("$WORK/req.json", "r"); wrk.body = f:read("*a"); f:close()
LUA
PORTS=()
for i in "${!BINS[@]}"; do
  port=$((18110 + i))
  RUST_LOG=warn "${BINS[$i]}" run --config "$SEMTAP_CONFIG" --listen "127.0.0.1:$port" \
    --upstream http://127.0.0.1:18101 --admin "127.0.0.1:$((18130 + i))" >"$WORK/semtap$i.log" 2>&1 &
  echo $! > "$WORK/semtap$i.pid"
  PORTS+=("$port")
done
for i in "${!BINS[@]}"; do wait_ready "http://127.0.0.1:$((18130 + i))" || { cat "$WORK/semtap$i.log" >&2; exit 1; }; done
FLOOR="${FLOOR:-1}"
if [ "$FLOOR" = 1 ]; then
  cargo build --release --quiet --example hyper_floor
  start_hyper_floor 18120 18101
fi
if [ -n "$RATE" ]; then
  cargo build --release --quiet --example loadgen
  LOADGEN="$TARGET/release/examples/loadgen"
fi
# One run at port $1 with the proxy's pids after it: "rps cpu_us_per_request" under wrk, or
# "p50_us p99_us" under loadgen at RATE.
cell() {
  local port=$1; shift
  if [ -n "$RATE" ]; then
    "$LOADGEN" --url "http://127.0.0.1:$port$REQ_PATH" --rate "$RATE" --duration "$SECS" \
      --connections 64 --body "$WORK/req.json" |
      python3 -c "import json,sys; d=json.load(sys.stdin); assert d['errors']==0, d; print(d['p50_us'], d['p99_us'])"
    return
  fi
  local c0 c1 out
  c0=$(cpu_s "$@")
  out=$(wrk -t2 -c64 -d"${SECS}s" -s "$WORK/post.lua" "http://127.0.0.1:$port$REQ_PATH")
  c1=$(cpu_s "$@")
  python3 -c "import sys; print(f'{float(sys.argv[1]):.0f} {(float(sys.argv[4])-float(sys.argv[3]))*1e6/float(sys.argv[2]):.1f}')" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" "$(awk '/requests in/ {print $1}' <<<"$out")" "$c0" "$c1"
}
# Runs cell "$@" into $rps and $us, and stops the benchmark if the run failed (a failure inside
# `read <<<"$(...)"` would not stop it under set -e).
measure() {
  read -r rps us <<<"$(cell "$@")"
  [ -n "${us:-}" ] || { echo "the run against port $1 failed" >&2; exit 1; }
}
NGINX_WORKER=$(pgrep -P "$(cat "$WORK/proxy.pid")")
unit="rps (CPU µs/request)"
[ -n "$RATE" ] && unit="p50 (p99) µs at $RATE/s"
header="| round "; rule="|---"
[ -n "$RATE" ] && { header+="| direct $unit "; rule+="|---"; }
for i in "${!BINS[@]}"; do header+="| build $i $unit "; rule+="|---"; done
[ "$FLOOR" = 1 ] && { header+="| hyper floor $unit "; rule+="|---"; }
echo "$header| nginx $unit |"
echo "$rule|---|"
: > "$WORK/cells"
for r in $(seq "$ROUNDS"); do
  row="| $r "
  if [ -n "$RATE" ]; then
    measure 18101
    echo "direct $rps $us" >> "$WORK/cells"
    row+="| $rps ($us) "
  fi
  for i in "${!BINS[@]}"; do
    measure "${PORTS[$i]}" "$(cat "$WORK/semtap$i.pid")"
    echo "$i $rps $us" >> "$WORK/cells"
    row+="| $rps ($us) "
  done
  if [ "$FLOOR" = 1 ]; then
    measure 18120 "$(cat "$WORK/floor.pid")"
    echo "floor $rps $us" >> "$WORK/cells"
    row+="| $rps ($us) "
  fi
  measure 18102 $NGINX_WORKER
  echo "nginx $rps $us" >> "$WORK/cells"
  echo "$row| $rps ($us) |"
done
python3 - "$WORK/cells" "${BINS[@]}" <<'PY'
import statistics, sys
cells = [l.split() for l in open(sys.argv[1])]
by = {}
for who, rps, us in cells:
    by.setdefault(who, []).append((float(rps), float(us)))
print()
names = [(str(i), f"build {i} ({b})") for i, b in enumerate(sys.argv[2:])]
if "floor" in by:
    names.append(("floor", "hyper floor (examples/hyper_floor.rs)"))
def medians(key):
    return tuple(statistics.median(c[i] for c in by[key]) for i in (0, 1))
if "direct" in by:
    d50, d99 = medians("direct")
    print(f"direct: median p50 {d50:.0f} µs, p99 {d99:.0f} µs")
    for key, name in names + [("nginx", "nginx proxy_pass (1 worker)")]:
        p50, p99 = medians(key)
        print(f"{name}: median p50 {p50:.0f} µs ({p50 - d50:+.0f}), p99 {p99:.0f} µs ({p99 - d99:+.0f})")
    sys.exit(0)
ng = statistics.median(r for r, _ in by["nginx"])
for key, name in names:
    v = by[key]
    rps = statistics.median(r for r, _ in v)
    print(f"{name}: median {rps:.0f} rps, {statistics.median(u for _, u in v):.1f} µs CPU/request, {rps / ng:.2f} of nginx's median {ng:.0f}")
PY
