#!/usr/bin/env bash
# The test command the README gives. Runs the whole suite: unit tests, integration tests over
# loopback sockets, and the official-SDK test (skipped with a note if the SDKs are missing,
# except under CI=true where they are required).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets "$@"
