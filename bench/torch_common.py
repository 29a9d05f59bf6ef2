"""What the Python sides of the benchmarks share: the GGUF as a Hugging Face folder, and
right-padded batches."""

import os
import shutil

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def hf_folder(gguf, tmp):
    """The benchmark's GGUF as an ordinary Hugging Face folder of float32 weights, for
    libraries that read no GGUF (TransformerLens, sae-dashboard). transformers
    dequantizes the GGUF; a model loaded from GGUF refuses save_pretrained, a plain copy
    of it does not."""
    shutil.copy(gguf, os.path.join(tmp, "model.gguf"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file="model.gguf", dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    folder = os.path.join(tmp, "hf")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tmp, gguf_file="model.gguf").save_pretrained(folder)
    return folder


def transformer_lens_bridge(folder):
    """TransformerLens 4's model of a Hugging Face folder, float32 on the CPU, in
    compatibility mode (its `from_pretrained` processing), and the folder's tokenizer."""
    from transformer_lens.model_bridge import TransformerBridge

    model = TransformerBridge.boot_transformers(folder, device="cpu", dtype=torch.float32)
    model.enable_compatibility_mode()
    return model, AutoTokenizer.from_pretrained(folder)


def print_sweep_result(seconds, largest_difference):
    """A TransformerLens sweep's result as one JSON line: its wall time, the process's
    peak RSS, the largest difference from qexp's report, and the version."""
    import importlib.metadata
    import json
    import resource

    print(json.dumps({
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "largest_difference_from_qexp": largest_difference,
        "transformer_lens": importlib.metadata.version("transformer_lens"),
    }))


def padded_batches(sequences, size):
    """Consecutive groups of `size` token lists as (ids, mask), right-padded with 0."""
    for i in range(0, len(sequences), size):
        chunk = sequences[i : i + size]
        width = max(map(len, chunk))
        ids = torch.tensor([s + [0] * (width - len(s)) for s in chunk])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk])
        yield ids, mask
