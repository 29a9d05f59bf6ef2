"""Eager PyTorch / transformers side of the forward-pass benchmark, on the same GGUF
(dequantized to f32, as qexp's export is), the same shapes, the same thread count.
Prints one JSON object. Also measures this CPU's sgemm peak with torch.mm."""

import json
import os
import statistics
import sys
import tempfile
import time
import shutil

import torch
from transformers import AutoModelForCausalLM

CONFIGS = [(1, 8), (1, 32), (8, 128)]


def median_seconds(runs, f):
    f()
    f()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    gguf, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(gguf, os.path.join(tmp, "model.gguf"))
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file="model.gguf", dtype=torch.float32).eval()
    rows = []
    for batch, pos in CONFIGS:
        ids = torch.tensor([[100 + (b * 7919 + p * 104729) % 40000 for p in range(pos)] for b in range(batch)])
        mask = torch.ones_like(ids)
        runs = 5 if batch * pos >= 1024 else 20

        def forward():
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask)

        rows.append({"batch": batch, "pos": pos, "torch_eager": median_seconds(runs, forward)})
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    sgemm = median_seconds(10, lambda: torch.mm(a, b))
    print(json.dumps({"torch": torch.__version__, "sgemm_gflops": 2 * n**3 / sgemm / 1e9, "configs": rows}))


if __name__ == "__main__":
    main()
