#!/usr/bin/env python3
"""PyTorch's side of `cargo xtask bench --modes products`: `torch.matmul` at the encoder's weight
products at inference's rows (batch 32 x seq), f32 and bf16, in GFLOP/s (two per multiply-add),
the best of --repeats runs after a warm-up, on PyTorch's default threads.

    /tmp/pyref/venv/bin/python scripts/peer-products.py --model roberta-base [--seq 128] [--json F]

(the venv `scripts/peer-bench.sh` builds). bf16 is `torch.matmul` of bf16 tensors, PyTorch's own
bf16 product (oneDNN where the CPU has AMX or AVX-512 BF16); f32 is its default (no reduced
precision).
"""
import argparse
import json
import time

import torch

# (hidden, intermediate) of the shapes `cargo xtask bench` knows.
MODELS = {"minilm": (384, 1536), "roberta-base": (768, 3072), "roberta-large": (1024, 4096)}
INFER_BATCH = 32


def rate(m, k, n, dtype, repeats):
    x = torch.randn(m, k).to(dtype)
    w = torch.randn(k, n).to(dtype)
    for _ in range(2):
        torch.matmul(x, w)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(x, w)
        best = min(best, time.perf_counter() - started)
    return 2 * m * n * k / best / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm", choices=sorted(MODELS))
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="write the results here as well")
    a = ap.parse_args()
    hidden, inner = MODELS[a.model]
    rows = INFER_BATCH * a.seq
    shapes = [
        ("query_key_value", (rows, hidden, 3 * hidden)),
        ("attention_output", (rows, hidden, hidden)),
        ("intermediate", (rows, hidden, inner)),
        ("output", (rows, inner, hidden)),
    ]
    results = []
    for name, (m, k, n) in shapes:
        f32 = rate(m, k, n, torch.float32, a.repeats)
        bf16 = rate(m, k, n, torch.bfloat16, a.repeats)
        results.append({"product": name, "shape": [m, k, n], "f32_gflops": f32, "bf16_gflops": bf16})
        print(f"{a.model:14} {name:17} {m}x{k}x{n}: f32 {f32:.0f}, bf16 {bf16:.0f} GFLOP/s")
    out = {"device": f"torch {torch.__version__} CPU ({torch.get_num_threads()} threads, "
                     f"{torch.backends.cpu.get_cpu_capability()})",
           "model": a.model, "products": results}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
