"""PyTorch side of the seed-evaluation benchmark: the seed's three passes over the same
prompts with forward hooks, as TransformerLens users write them, on transformers' Llama
(the same GGUF, dequantized to f32), batches of 8 right-padded prompts, eager attention so
the head's pattern is available. Computes the same columns qexp's per_token does (losses,
KL, the head's argmax attention clean and reconstructed, query norms, SAE reconstruction
statistics) and prints the wall time of everything after loading as JSON."""

import json
import os
import shutil
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_common import padded_batches  # noqa: E402

LAYER, HEAD, D_HEAD, BATCH = 1, 4, 64, 8


def main():
    gguf, data, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(gguf, os.path.join(tmp, "model.gguf"))
        model = AutoModelForCausalLM.from_pretrained(
            tmp, gguf_file="model.gguf", dtype=torch.float32, attn_implementation="eager"
        ).eval()
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file="model.gguf")
    sae = load_file(os.path.join(data, "sae", "sae_weights.safetensors"))
    prompts = open(os.path.join(data, "prompts.txt"), encoding="utf-8").read().split("<|endoftext|>")
    sequences = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    attn = model.model.layers[LAYER].self_attn
    cols = slice(HEAD * D_HEAD, (HEAD + 1) * D_HEAD)

    def ablate(module, args):
        (x,) = args
        x = x.clone()
        x[..., cols] = 0
        return (x,)

    captured = {}

    def capture_q(module, args, output):
        captured["q"] = output[..., cols].detach().clone()

    def reconstruct_q(module, args, output):
        q = output[..., cols]
        acts = torch.relu((q - sae["b_dec"]) @ sae["W_enc"] + sae["b_enc"])
        captured["acts"] = acts
        output = output.clone()
        output[..., cols] = acts @ sae["W_dec"] + sae["b_dec"]
        return output

    def run(ids, mask, hooks):
        handles = [register(fn) for register, fn in hooks]
        try:
            return model(input_ids=ids, attention_mask=mask, output_attentions=True)
        finally:
            for h in handles:
                h.remove()

    start = time.perf_counter()
    rows = 0
    with torch.inference_mode():
        for ids, mask in padded_batches(sequences, BATCH):
            clean = run(ids, mask, [(attn.q_proj.register_forward_hook, capture_q)])
            q = captured["q"]
            ablated = run(ids, mask, [(attn.o_proj.register_forward_pre_hook, ablate)])
            rec = run(ids, mask, [(attn.q_proj.register_forward_hook, reconstruct_q)])
            acts = captured["acts"]
            targets = ids[:, 1:]
            real = mask[:, 1:].bool()
            lp_clean = clean.logits[:, :-1].log_softmax(-1)
            losses = [-(o.logits[:, :-1].log_softmax(-1).gather(-1, targets[..., None])[..., 0])[real] for o in (clean, ablated, rec)]
            lp_rec = rec.logits[:, :-1].log_softmax(-1)
            kl = (lp_clean.exp() * (lp_clean - lp_rec)).sum(-1)[real]
            max_clean = clean.attentions[LAYER][:, HEAD].max(-1)
            max_rec = rec.attentions[LAYER][:, HEAD].max(-1)
            recon = acts @ sae["W_dec"] + sae["b_dec"]
            mse = ((recon - q) ** 2).mean(-1)
            active = (acts > 0).sum(-1)
            top = acts.topk(10, dim=-1)
            columns = [*losses, kl, max_clean.values, max_clean.indices, max_rec.values, max_rec.indices,
                       q.norm(dim=-1), recon.norm(dim=-1), mse, active, top.values, top.indices]
            for c in columns:
                c.tolist()
            rows += int(real.sum())
    seconds = time.perf_counter() - start
    print(json.dumps({"torch": torch.__version__, "rows": rows, "seconds": seconds}))


if __name__ == "__main__":
    main()
