"""TransformerLens side of the generation benchmark: 50 greedy tokens after each prompt
bench/generate.rs continues (their token ids are passed in, as its JSON), by the clean
model and with the same steering vector added to `blocks.6.hook_resid_pre` by a hook,
with TransformerLens' `generate`, with and without its key/value cache. The model is
the same GGUF dequantized to float32, booted with `TransformerBridge.boot_transformers`
in compatibility mode. Prints median seconds of three runs after a warm-up, and the
tokens made, as JSON.

    python bench/generate_tl.py GGUF THREADS QEXP_JSON
"""

import importlib.metadata
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_common import hf_folder, transformer_lens_bridge  # noqa: E402

NEW_TOKENS = 50
HOOK = "blocks.6.hook_resid_pre"


def main():
    gguf, threads, qexp = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = hf_folder(gguf, tmp)
        model, _ = transformer_lens_bridge(folder)
    d_model = model.cfg.d_model
    # The formula of bench/generate.rs' steering_vector, in float32.
    vector = 2.0 * torch.sin(torch.arange(d_model, dtype=torch.float32) * torch.tensor(0.37))

    def steer(resid, hook):
        return resid + vector

    def generate(ids, kv_cache):
        return model.generate(
            torch.tensor([ids]),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            stop_at_eos=False,
            use_past_kv_cache=kv_cache,
            verbose=False,
            return_type="tokens",
        )[0, len(ids):].tolist()

    result = {"transformer_lens": importlib.metadata.version("transformer_lens")}
    for label in ("short", "long"):
        ids = qexp[label]["prompt"]
        result[label] = {}
        for name, hooks in (("clean", []), ("steered", [(HOOK, steer)])):
            for kv_cache in (True, False):
                times = []
                with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
                    made = generate(ids, kv_cache)
                    for _ in range(3):
                        start = time.perf_counter()
                        generate(ids, kv_cache)
                        times.append(time.perf_counter() - start)
                key = f"{name}_{'kv_cache' if kv_cache else 'rerun'}"
                result[label][key] = {
                    "seconds": sorted(times)[1],
                    "same_tokens_as_qexp": made == qexp[label][name]["tokens"],
                }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
