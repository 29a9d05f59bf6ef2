"""Inputs for the seed-evaluation benchmark, written to bench/.data: 100 prompts of about
210 tokens (consecutive fortunes joined, as TinyStories itself cannot be downloaded here;
the seed's 100 stories came to 21,253 tokens) and an SAE of the seed's shape (d_in 64,
d_sae 4096) with seeded random weights in SAELens' layout. Timing does not depend on the
SAE being trained; both sides load the same file."""

import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

PROMPTS, WORDS_PER_PROMPT = 100, 100


def main():
    training_text, out = sys.argv[1], sys.argv[2]
    os.makedirs(os.path.join(out, "sae"), exist_ok=True)
    fortunes = [f.strip() for f in open(training_text, encoding="utf-8").read().split("\n%\n") if f.strip()]
    prompts, current = [], []
    for fortune in fortunes:
        current.append(fortune)
        if sum(len(f.split()) for f in current) >= WORDS_PER_PROMPT:
            prompts.append("\n\n".join(current))
            current = []
        if len(prompts) == PROMPTS:
            break
    with open(os.path.join(out, "prompts.txt"), "w", encoding="utf-8") as f:
        f.write("<|endoftext|>".join(prompts))

    rng = np.random.default_rng(0)
    d_in, d_sae = 64, 4096
    w_dec = rng.standard_normal((d_sae, d_in)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    save_file(
        {
            "W_enc": np.ascontiguousarray(w_dec.T),
            "b_enc": np.full(d_sae, -0.5, dtype=np.float32),
            "W_dec": w_dec,
            "b_dec": np.zeros(d_in, dtype=np.float32),
        },
        os.path.join(out, "sae", "sae_weights.safetensors"),
    )
    cfg = {
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": d_sae,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.1.attn.hook_q", "hook_head_index": 4},
    }
    with open(os.path.join(out, "sae", "cfg.json"), "w") as f:
        json.dump(cfg, f)


if __name__ == "__main__":
    main()
