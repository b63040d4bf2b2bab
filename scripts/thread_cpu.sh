#!/usr/bin/env bash
# CPU time and context switches per request, by thread name, of a running process while wrk
# loads it (BENCHMARKS.md): shows which of semtap's threads (semtap-io, semtap-analysis, ...)
# a change moved, where bench_tap_ab.sh only gives the process total. Reads
# /proc/PID/task/*/{stat,status} before and after one wrk run.
#
#   ./scripts/thread_cpu.sh PID URL [seconds] [wrk script]
#   ./scripts/thread_cpu.sh "$(pgrep -f 'semtap run')" http://127.0.0.1:18110/v1/chat/completions 3 post.lua
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 PID URL [seconds] [wrk script]" >&2; exit 2; }
PID=$1; URL=$2; SECS=${3:-3}; LUA=${4:-}
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || { echo "seconds must be a positive integer" >&2; exit 2; }
[ -d "/proc/$PID" ] || { echo "no process $PID" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
TICKS=$(getconf CLK_TCK)
# One line per thread name: name, CPU seconds, voluntary and involuntary switches (summed).
# A thread that exits between the two snapshots is left out of the second one (its name's
# totals then shrink): read the figures of a run whose threads live throughout, as semtap's do.
snap() {
  local t name stat status
  for t in /proc/"$PID"/task/*; do
    # Read each file once; a thread gone in the meantime is skipped.
    name=$(tr ' ' '_' < "$t/comm" 2>/dev/null) || continue
    stat=$(cat "$t/stat" 2>/dev/null) || continue
    status=$(cat "$t/status" 2>/dev/null) || continue
    [ -n "$name" ] || continue
    # comm may hold spaces; utime and stime are fields 14 and 15, the 12th and 13th after ')'.
    awk -v name="$name" -v hz="$TICKS" -v stat="$stat" '
      BEGIN { sub(/^.*\) /, "", stat); split(stat, f, " "); cpu = (f[12] + f[13]) / hz }
      /^voluntary_ctxt_switches/ { v = $2 }
      /^nonvoluntary_ctxt_switches/ { n = $2 }
      END { print name, cpu, v, n }' <<<"$status"
  done | awk '{c[$1] += $2; v[$1] += $3; n[$1] += $4} END {for (k in c) print k, c[k], v[k], n[k]}' | sort
}
before=$(mktemp); after=$(mktemp)
trap 'rm -f "$before" "$after"' EXIT
snap > "$before"
args=(-t2 -c64 -d"${SECS}s")
[ -n "$LUA" ] && args+=(-s "$LUA")
out=$(wrk "${args[@]}" "$URL")
snap > "$after"
requests=$(awk '/requests in/ {print $1}' <<<"$out")
[ -n "$requests" ] && [ "$requests" -gt 0 ] || { echo "wrk made no requests:" >&2; echo "$out" >&2; exit 1; }
echo "$((requests / SECS)) requests/s"
echo "| thread | CPU µs/request | voluntary switches/request | involuntary switches/request |"
echo "|---|---|---|---|"
join "$before" "$after" | awk -v r="$requests" '{printf "| %s | %.2f | %.3f | %.3f |\n", $1, ($5 - $2) * 1e6 / r, ($6 - $3) / r, ($7 - $4) / r}'
