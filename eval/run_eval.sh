#!/usr/bin/env bash
# The whole evaluation (docs/EVALUATION.md): builds the streams from text on this machine,
# replays them through semtap on the static and transformer tiers, scores.
#
#   SEMTAP=target/release/semtap MODEL_DIR=models/all-MiniLM-L6-v2 ./eval/run_eval.sh
#
# Streams and replay outputs land in eval/data and eval/out (not committed); the scores in
# eval/results/. The transformer runs are the slow part (CPU: a few records per second per
# process when the machine is shared), hence their smaller streams.
set -euo pipefail
cd "$(dirname "$0")/.."
SEMTAP=${SEMTAP:-target/release/semtap}
MODEL_DIR=${MODEL_DIR:-models/all-MiniLM-L6-v2}
JOBS=${JOBS:-3}

# Streams (seeded; the corpus is extracted once into eval/data/corpus.json).
python3 eval/build_eval.py                        # anomalies (3x3000), drift (4x1500), stationary
python3 eval/build_eval.py --only-anomalies anomalies_lowrate --rate 0.002 --per-key 10000
python3 eval/build_eval.py --only-anomalies anomalies_small --per-key 1000
python3 eval/build_eval.py --only-drift drift_small --drift-pre 300 --drift-post 300 \
    --drift-segments topic_change,language_change,style_change

# Static tier: every stream, the large ones included.
python3 eval/score.py --bin "$SEMTAP" --model-dir "$MODEL_DIR" --tiers static \
    --streams anomalies,anomalies_lowrate,anomalies_small,drift,drift_small,stationary

# Transformer tier: the smaller streams.
python3 eval/score.py --bin "$SEMTAP" --model-dir "$MODEL_DIR" --tiers transformer \
    --streams anomalies_small,drift_small,stationary --jobs "$JOBS"

# Optional: a longer false-alarm run on the transformer tier (3 keys x 5 000 stationary
# responses, another seed; ~12 minutes on this machine's 2 cores). LONG=1 to run it.
if [ "${LONG:-0}" = 1 ]; then
  python3 eval/build_eval.py --only-stationary stationary_transformer_long --seed 4 \
      --stationary-transformer 5000 --stationary-transformer-keys 3
  "$SEMTAP" replay eval/data/stationary_transformer_long.jsonl \
      --out eval/out/stationary_transformer_long.transformer.jsonl --tier transformer \
      --model-dir "$MODEL_DIR"
  python3 eval/count_incidents.py eval/out/stationary_transformer_long.transformer.jsonl
fi
