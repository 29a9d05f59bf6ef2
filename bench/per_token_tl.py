"""TransformerLens side of the per-token benchmark: every token of the seed-evaluation
prompts, clean and with L1H4's output zero-ablated by a hook on `blocks.1.attn.hook_z`,
each token's loss under both and the KL divergence between them, in batches of 8
right-padded prompts, as a TransformerLens user writes it (`run_with_hooks`). With
`sorted`, prompts are batched in order of length (as qexp batches them) so padding
costs both sides alike; `file` batches them in file order. The model is
the same GGUF dequantized to float32, booted with `TransformerBridge.boot_transformers`
in compatibility mode (TransformerLens' `from_pretrained` processing). Prints the wall
time of everything after loading as JSON.

    python bench/per_token_tl.py GGUF DATA_DIR THREADS sorted|file
"""

import importlib.metadata
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_common import hf_folder, padded_batches, transformer_lens_bridge  # noqa: E402

LAYER, HEAD, BATCH = 1, 4, 8


def main():
    gguf, data, threads, order = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = hf_folder(gguf, tmp)
        model, tokenizer = transformer_lens_bridge(folder)
    prompts = open(os.path.join(data, "prompts.txt"), encoding="utf-8").read().split("<|endoftext|>")
    sequences = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if order == "sorted":
        sequences.sort(key=len)

    def ablate(z, hook):
        z[:, :, HEAD, :] = 0.0
        return z

    start = time.perf_counter()
    rows = 0
    with torch.inference_mode():
        for ids, mask in padded_batches(sequences, BATCH):
            clean = model(ids, attention_mask=mask)
            ablated = model.run_with_hooks(
                ids, attention_mask=mask, fwd_hooks=[(f"blocks.{LAYER}.attn.hook_z", ablate)]
            )
            targets = ids[:, 1:, None]
            real = mask[:, 1:].bool()
            lp_clean = clean[:, :-1].log_softmax(-1)
            lp_ablated = ablated[:, :-1].log_softmax(-1)
            loss = -lp_clean.gather(-1, targets)[..., 0][real]
            ablated_loss = -lp_ablated.gather(-1, targets)[..., 0][real]
            kl = (lp_clean.exp() * (lp_clean - lp_ablated)).sum(-1)[real]
            rows += loss.numel()
            assert ablated_loss.numel() == kl.numel() == loss.numel()
    seconds = time.perf_counter() - start
    version = importlib.metadata.version("transformer_lens")
    print(json.dumps({"rows": rows, "seconds": seconds, "transformer_lens": version}))


if __name__ == "__main__":
    main()
