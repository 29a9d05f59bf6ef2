#!/usr/bin/env bash
# SAE training throughput: qexp's trainer against SAELens' SAETrainer on the same cached
# activations (SmolLM2 L1H4 queries over 200k tokens of fortunes), the seed's shape (d_in
# 64, d_sae 4096), the same hyperparameters and thread count. Not part of the test suite;
# sae-lens and torch go into bench/.venv on first use (or set BENCH_PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash bench/cpu.sh
PYTHON=${BENCH_PYTHON:-bench/.venv/bin/python}
if [ ! -x "$PYTHON" ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install --quiet --disable-pip-version-check torch transformers gguf accelerate safetensors numpy
fi
"$PYTHON" -c "import sae_lens" 2>/dev/null || "$PYTHON" -m pip install --quiet --disable-pip-version-check sae-lens
THREADS=$(nproc)
TOKENS=${TOKENS:-1000000}
for batch in 4096 512; do
  qexp_json=$(cargo run --release --quiet --example bench_sae_train -- "$TOKENS" "$batch")
  saelens_json=$("$PYTHON" bench/sae_train_saelens.py "$TOKENS" "$batch" "$THREADS" 2>/dev/null)
  python3 - "$qexp_json" "$saelens_json" <<'PY'
import json, sys
q, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
qr, sr = q["tokens"] / q["seconds"], s["tokens"] / s["saelens_seconds"]
print(f"batch {q['batch_size']}: qexp {qr:,.0f} tokens/s, SAELens {sr:,.0f} tokens/s, qexp is {qr / sr:.2f}x")
PY
done
