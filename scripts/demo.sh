#!/usr/bin/env bash
# The README's first command: builds semtap and runs the demo (a simulated upstream, semtap in
# front of it and traffic through it), printing what semtap measures.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --quiet -- demo "$@"
