"""sae-dashboard side of the dashboards benchmark: feature-centric pages for the first
64 features of a residual SAE (SAELens layout, the one qexp trained and saved) over the
benchmark's tokens, with sae-dashboard's own runner (`SaeVisRunner`) on SmolLM2 loaded
by TransformerLens 2.x (`HookedSAETransformer`, no weight processing, float32, the same
GGUF dequantized, from a local folder). Prints the runner's time (model and SAE loaded before the clock
starts) and the time to write the HTML, as JSON.

    python bench/dashboards_saedash.py GGUF SAE_DIR TOKENS_JSON OUT_HTML THREADS
"""

import importlib.metadata
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_common import hf_folder  # noqa: E402

FEATURES = list(range(64))


def main():
    gguf, sae_dir, tokens_json, out_html, threads = sys.argv[1:6]
    torch.set_num_threads(int(threads))
    from sae_dashboard.data_writing_fns import save_feature_centric_vis
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner
    from sae_lens import SAE, HookedSAETransformer
    from transformer_lens import loading_from_pretrained
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # TransformerLens 2.x loads only the models on its list by name (SmolLM2 is not on
    # it); its config conversion reads a local folder's config.json, so a folder is let
    # through as its own official name.
    official_name = loading_from_pretrained.get_official_model_name
    loading_from_pretrained.get_official_model_name = lambda name: (
        name if os.path.isdir(name) else official_name(name)
    )

    with tempfile.TemporaryDirectory() as tmp:
        folder = hf_folder(gguf, tmp)
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = HookedSAETransformer.from_pretrained_no_processing(
            folder, hf_model=hf_model, tokenizer=tokenizer, dtype=torch.float32, device="cpu"
        )
    sae = SAE.load_from_disk(sae_dir, device="cpu")
    tokens = torch.tensor(json.load(open(tokens_json)))
    cfg = SaeVisConfig(
        hook_point=sae.cfg.metadata.hook_name,
        features=FEATURES,
        minibatch_size_features=64,
        minibatch_size_tokens=64,
        device="cpu",
        dtype="float32",
    )
    start = time.perf_counter()
    data = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)
    runner = time.perf_counter() - start
    start = time.perf_counter()
    save_feature_centric_vis(sae_vis_data=data, filename=out_html)
    written = time.perf_counter() - start
    print(json.dumps({
        "tokens": int(tokens.numel()),
        "features": len(FEATURES),
        "runner_seconds": runner,
        "write_seconds": written,
        "sae_dashboard": importlib.metadata.version("sae-dashboard"),
    }))


if __name__ == "__main__":
    main()
