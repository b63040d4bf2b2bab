#!/usr/bin/env python3
"""semtap's transformer tier vs sentence-transformers (PyTorch), side by side (issue 6).

For each cell (16/64/256 tokens x batch 1/8/32) it builds texts of exactly that many tokens
(as the model sees them, [CLS]/[SEP] included) from real prose (the Python standard library's
own documentation, pydoc_data), then measures, one right after the other on the same texts:
PyTorch at 2 threads, semtap's own forward (the packed CPU forward), semtap's tensor-graph
forward (its GPU path, run on the CPU), and candle-transformers' BertModel. Ratios are taken within a cell, so machine load affects both sides.

usage: python3 scripts/bench_embed.py [--seconds S] [--model-dir DIR] [--bin PATH]
  (build first: cargo build --release --example embed_speed)
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402


def prose_words():
    from pydoc_data.topics import topics
    text = " ".join(topics[k] for k in sorted(topics))
    text = re.sub(r"\*+|`+|[-=~^]{3,}", " ", text)
    return text.split()


def texts_of(tok, words, tokens, n):
    out = []
    for k in range(n):
        start = (k * 997) % (len(words) - 2000)
        lo, hi = 1, 600
        # Binary search on the number of words, then pad with a one-token word.
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(tok(" ".join(words[start:start + mid]))["input_ids"]) <= tokens:
                lo = mid
            else:
                hi = mid - 1
        text = " ".join(words[start:start + lo])
        while len(tok(text)["input_ids"]) < tokens:
            text += " a"
        assert len(tok(text)["input_ids"]) == tokens, (tokens, len(tok(text)["input_ids"]))
        out.append(text)
    return out


def torch_rate(model, texts, batch, seconds):
    model.encode(texts[:batch], batch_size=batch)
    windows = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(windows) < 3:
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < 1.0 or n == 0:
            model.encode(texts[:batch], batch_size=batch)
            n += batch
        windows.append(n / (time.perf_counter() - t0))
    windows.sort()
    return windows[len(windows) // 2]


def flops_per_text(tokens, layers=6, hidden=384, inter=1536):
    """Multiply-adds x2 of one forward over a text of `tokens` tokens (linear layers plus the
    two attention matmuls); embeddings, norms and activations are negligible."""
    linear = 2 * tokens * layers * (hidden * 3 * hidden + hidden * hidden + 2 * hidden * inter)
    attention = 2 * 2 * layers * tokens * tokens * hidden
    return linear + attention


def matmul_peak(seconds=3.0, n=1536):
    """The machine's f32 matmul rate right now (PyTorch's BLAS, 2 threads, large squares):
    the ceiling each row is read against."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best / 1e9


def rust_rate(binary, model_dir, path, batch, forward, seconds):
    out = subprocess.run(
        [binary, "--model-dir", model_dir, "--texts", path, "--batch", str(batch),
         "--forward", forward, "--seconds", str(seconds)],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--model-dir", default="models/all-MiniLM-L6-v2")
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    ap.add_argument("--bin", default=os.path.join(target, "release/examples/embed_speed"))
    ap.add_argument("--tokens", default="16,64,256")
    ap.add_argument("--batches", default="1,8,32")
    a = ap.parse_args()
    torch.set_num_threads(2)
    model = SentenceTransformer(a.model_dir, device="cpu")
    model.max_seq_length = 256
    tok = model.tokenizer
    words = prose_words()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; texts from pydoc_data", flush=True)
    peak = matmul_peak()
    print(f"matmul peak (torch.mm 1536^2, 2 threads, best of {3}s): {peak:.0f} GFLOP/s", flush=True)
    print("| tokens | batch | PyTorch /s | semtap /s | semtap graph /s | candle BertModel /s "
          "| semtap / PyTorch | semtap / BertModel | semtap GFLOP/s (% of peak) | PyTorch GFLOP/s | semtap peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for tokens in [int(x) for x in a.tokens.split(",")]:
        texts = texts_of(tok, words, tokens, 32)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(texts, f)
            path = f.name
        for batch in [int(x) for x in a.batches.split(",")]:
            pt = torch_rate(model, texts, batch, a.seconds)
            ours = rust_rate(a.bin, a.model_dir, path, batch, "semtap", a.seconds)
            graph = rust_rate(a.bin, a.model_dir, path, batch, "graph", a.seconds)
            theirs = rust_rate(a.bin, a.model_dir, path, batch, "candle", a.seconds)
            f = flops_per_text(tokens) / 1e9
            print(f"| {tokens} | {batch} | {pt:.1f} | {ours['per_s']:.1f} | {graph['per_s']:.1f} | {theirs['per_s']:.1f} | "
                  f"{ours['per_s'] / pt:.2f} | {ours['per_s'] / theirs['per_s']:.2f} | "
                  f"{ours['per_s'] * f:.0f} ({100 * ours['per_s'] * f / peak:.0f}%) | {pt * f:.0f} | "
                  f"{ours['peak_rss_kb'] / 1024:.0f} |",
                  flush=True)
        os.unlink(path)


if __name__ == "__main__":
    sys.exit(main())
