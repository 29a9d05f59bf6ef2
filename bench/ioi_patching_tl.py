"""TransformerLens side of the sweep benchmark: experiments/ioi_patching.qexp's two
sweeps with TransformerLens' own patching utilities: the residual stream before each
block at each position (`get_act_patch_resid_pre`) and each head's output at every
position (`get_act_patch_attn_head_out_all_pos`), clean -> corrupted, the logit
difference " Mary" - " John" recovered. The model is the same GGUF dequantized to
float32, booted with `TransformerBridge.boot_transformers` in compatibility mode.
Prints the wall time of the sweeps (the clean and corrupted runs included, loading
not), the peak RSS of the process, and the largest difference from qexp's report.

    python bench/ioi_patching_tl.py HF_FOLDER THREADS REPORT_DIR

HF_FOLDER is the GGUF as a Hugging Face folder (torch_common.hf_folder, made by
bench/sweeps.sh in another process, so that the peak RSS is the sweep's and not the
conversion's).
"""

import csv
import os
import sys
import time

import torch
from transformer_lens import patching

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_common import print_sweep_result, transformer_lens_bridge  # noqa: E402

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


def main():
    folder, threads, report = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(threads)
    model, tokenizer = transformer_lens_bridge(folder)
    ids = lambda text: torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    clean_tokens, corrupted_tokens = ids(CLEAN), ids(CORRUPTED)
    mary, john = (tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (" Mary", " John"))

    start = time.perf_counter()
    with torch.inference_mode():
        clean_logits, clean_cache = model.run_with_cache(clean_tokens)
        corrupted_logits = model(corrupted_tokens)

        def logit_diff(logits):
            return logits[0, -1, mary] - logits[0, -1, john]

        clean_diff, corrupted_diff = logit_diff(clean_logits), logit_diff(corrupted_logits)

        def recovered(logits):
            return (logit_diff(logits) - corrupted_diff) / (clean_diff - corrupted_diff)

        resid = patching.get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, recovered)
        heads = patching.get_act_patch_attn_head_out_all_pos(
            model, corrupted_tokens, clean_cache, recovered
        )
    seconds = time.perf_counter() - start

    worst = 0.0
    for name, table in (("resid", resid), ("heads", heads)):
        with open(os.path.join(report, "results", f"{name}.csv"), encoding="utf-8") as f:
            for row in csv.DictReader(f):
                column = int(row["pos"] if name == "resid" else row["head"])
                theirs = float(table[int(row["layer"]), column])
                worst = max(worst, abs(theirs - float(row["recovered"])))
    print_sweep_result(seconds, worst)


if __name__ == "__main__":
    main()
