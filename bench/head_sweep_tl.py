"""TransformerLens side of the loop-sweep benchmark: bench/head_sweep.qexp's sweep as a
TransformerLens user writes it, a hook loop: each of the 270 heads' `hook_z` zeroed in
turn by `run_with_hooks` on the IOI prompt, the logit difference " Mary" - " John"
read under each. The model is the same GGUF dequantized to float32, booted with
`TransformerBridge.boot_transformers` in compatibility mode. Prints the loop's wall time
(loading not included), the peak RSS of the process, and the largest difference from
qexp's report.

    python bench/head_sweep_tl.py HF_FOLDER THREADS REPORT_DIR
"""

import csv
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_common import print_sweep_result, transformer_lens_bridge  # noqa: E402

PROMPT = "When Mary and John went to the store, John gave a drink to"


def main():
    folder, threads, report = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(threads)
    model, tokenizer = transformer_lens_bridge(folder)
    tokens = torch.tensor([tokenizer(PROMPT, add_special_tokens=False)["input_ids"]])
    mary, john = (tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (" Mary", " John"))

    diffs = {}
    start = time.perf_counter()
    with torch.inference_mode():
        for layer in range(model.cfg.n_layers):
            for head in range(model.cfg.n_heads):

                def zero(z, hook, head=head):
                    z[:, :, head, :] = 0.0
                    return z

                logits = model.run_with_hooks(
                    tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero)]
                )
                diffs[(layer, head)] = (logits[0, -1, mary] - logits[0, -1, john]).item()
    seconds = time.perf_counter() - start

    worst = 0.0
    with open(os.path.join(report, "results", "sweep.csv"), encoding="utf-8") as f:
        for row in csv.DictReader(f):
            theirs = diffs[(int(row["layer"]), int(row["head"]))]
            worst = max(worst, abs(theirs - float(row["logit_diff"])))
    print_sweep_result(seconds, worst)


if __name__ == "__main__":
    main()
