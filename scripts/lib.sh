# Shared set-up of the load scripts (bench_tap.sh, bench_engine.sh, soak.sh); sourced, not run.

# Installs the Debian packages named, if any of their commands is missing.
need_debs() {
  local t
  for t in "$@"; do
    if ! command -v "$t" >/dev/null; then
      apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
      return
    fi
  done
}

# Installs the default model into models/ unless it is there.
need_model() {
  [ -f models/all-MiniLM-L6-v2/model.safetensors ] || cargo run --release --quiet -- model pull --dest models
}

# Sets WORK to a fresh temporary folder; at exit every process whose pid file lies in it is
# killed and the folder removed.
make_work() {
  WORK="$(mktemp -d)"
  trap 'kill $(cat "$WORK"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
}

# Waits (up to $2 seconds, default 120) until semtap's admin server at $1 reports every
# component ok, so a benchmark does not time the model loading in the background.
wait_ready() {
  local admin="$1" limit="${2:-120}" i
  for ((i = 0; i < limit * 4; i++)); do
    if curl -s "$admin/status" | python3 -c 'import json,sys; c=json.load(sys.stdin).get("components",{}); sys.exit(0 if c and all(v.get("status")=="ok" for v in c.values()) else 1)' 2>/dev/null; then
      return 0
    fi
    sleep 0.25
  done
  echo "semtap at $admin not ready after ${limit}s" >&2
  return 1
}

# Writes the tap benchmarks' fixed bodies into $1: chat.json (a ~1 KB chat completion),
# stream.sse (the same answer as ~130 SSE events), req.json and req_stream.json (the requests).
bench_payloads() {
  python3 - "$1" <<'PY'
import json, sys
work = sys.argv[1]
text = ("Tides are caused mainly by the Moon's gravity pulling on the oceans, with the Sun adding a "
        "smaller pull; when they line up we get spring tides, and at right angles, neap tides. ") * 3
chat = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text[:700]}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 150, "total_tokens": 170}}
open(f"{work}/chat.json", "w").write(json.dumps(chat))
events = []
for i, word in enumerate(text[:700].split(" ")):
    events.append("data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18", "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}) + "\n\n")
events.append("data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18", "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 150, "total_tokens": 170}}) + "\n\n")
events.append("data: [DONE]\n\n")
open(f"{work}/stream.sse", "w").write("".join(events))
open(f"{work}/req.json", "w").write(json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "How do tides work?"}]}))
open(f"{work}/req_stream.json", "w").write(json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "How do tides work?"}]}))
PY
}

# Writes $WORK/$1.conf: an nginx origin on 127.0.0.1:$2 serving $WORK/www, files under
# /v1/chat/ as JSON and under /v1/stream/ as an event stream, whatever the method.
nginx_origin() {
  cat > "$WORK/$1.conf" <<NGX
worker_processes 1;
pid $WORK/$1.pid;
error_log $WORK/$1.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  types { }
  server {
    listen 127.0.0.1:$2;
    root $WORK/www;
    location /v1/chat/ { default_type application/json; error_page 405 =200 \$uri; }
    location /v1/stream/ { default_type text/event-stream; error_page 405 =200 \$uri; }
  }
}
NGX
}

# Writes $WORK/$1.conf: nginx proxy_pass as its own nginx on 127.0.0.1:$2 with $3
# worker_processes, to the origin on port $4 (keep-alive upstream, no buffering).
nginx_proxy() {
  cat > "$WORK/$1.conf" <<NGX
worker_processes $3;
pid $WORK/$1.pid;
error_log $WORK/$1.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:$4; keepalive 128; }
  server {
    listen 127.0.0.1:$2;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGX
}

# Starts examples/hyper_floor (built under $TARGET) on 127.0.0.1:$1 in front of the origin on
# port $2, its pid in $WORK/floor.pid, and waits until it answers.
start_hyper_floor() {
  "$TARGET/release/examples/hyper_floor" "127.0.0.1:$1" "127.0.0.1:$2" >"$WORK/floor.log" 2>&1 &
  echo $! > "$WORK/floor.pid"
  local i
  for ((i = 0; i < 100; i++)); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  echo "hyper_floor on port $1 did not answer" >&2
  cat "$WORK/floor.log" >&2
  return 1
}

# CPU seconds (user + system) used so far by the processes whose pids are given, summed.
cpu_s() {
  local p
  for p in "$@"; do cat "/proc/$p/stat"; done |
    awk -v t="$(getconf CLK_TCK)" '{s += ($14 + $15) / t} END {print s + 0}'
}
