# Sourced by the bench scripts that compare with TransformerLens: sets PYTHON to a Python
# with torch, transformers, gguf and transformer_lens, installing them into bench/.venv
# on first use (or set BENCH_PYTHON to a Python that has them).
PYTHON=${BENCH_PYTHON:-bench/.venv/bin/python}
if [ ! -x "$PYTHON" ] || ! "$PYTHON" -c "import transformer_lens" 2>/dev/null; then
  [ -x "$PYTHON" ] || python3 -m venv bench/.venv
  "$PYTHON" -m pip install --quiet --disable-pip-version-check torch transformers gguf accelerate safetensors numpy transformer_lens
fi
