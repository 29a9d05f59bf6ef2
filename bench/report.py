"""Joins the two benchmark outputs into the table the README records."""

import json
import sys

qexp, torch = (json.load(open(p)) for p in sys.argv[1:3])
peak = torch["sgemm_gflops"]
print(f"threads {qexp['threads']}, torch {torch['torch']}, sgemm peak {peak:.1f} GFLOP/s (torch.mm 2048x2048)")
print(f"{'batch x pos':>12} {'torch eager':>12} {'qexp':>10} {'speed-up':>9} {'no hook pts':>12} {'hook cost':>10} {'+30 hook_q':>11} {'GFLOP/s':>9} {'% peak':>7}")
for q, t in zip(qexp["configs"], torch["configs"]):
    tokens = q["batch"] * q["pos"]
    attention = 4 * q["batch"] * qexp["n_heads"] * q["pos"] ** 2 * qexp["d_head"] * qexp["n_layers"]
    flops = 2 * tokens * qexp["matmul_params"] + attention
    gflops = flops / q["hooked"] / 1e9
    print(
        f"{q['batch']:>5} x {q['pos']:<5} {t['torch_eager'] * 1e3:>10.1f}ms {q['hooked'] * 1e3:>8.1f}ms {t['torch_eager'] / q['hooked']:>8.2f}x"
        f" {q['no_hook_points'] * 1e3:>10.1f}ms {q['hooked'] / q['no_hook_points'] - 1:>+9.1%} {q['hooked_with_30_hook_q'] * 1e3:>9.1f}ms"
        f" {gflops:>9.1f} {gflops / peak:>6.0%}"
    )
