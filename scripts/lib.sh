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
