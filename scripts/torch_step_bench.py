#!/usr/bin/env python3
"""The PyTorch side of `scripts/gpu-bench.sh`: the same training step as `cargo xtask bench`
(encoder + regression and classification heads, constant task weights 0.9/0.1, AdamW), on a
random-weight RoBERTa of a given shape, on CUDA or CPU: fp32 (PyTorch's default, no TF32), tf32
(fp32 with TF32 matrix units allowed) or bf16 autocast.

    python3 torch_step_bench.py --shape roberta-large --batch 10 --seq 512 --device cuda \
        --precision fp32,tf32,bf16 [--steps 5 --warmup 2] [--json out.json]

Prints one line per precision: median seconds per step and peak device memory.
"""
import argparse
import json
import statistics
import time

import torch
from torch import nn
from transformers import RobertaConfig, RobertaModel

SHAPES = {  # layers, hidden, heads, intermediate
    "tiny": (2, 64, 4, 128),
    "roberta-base": (12, 768, 12, 3072),
    "roberta-large": (24, 1024, 16, 4096),
}


class Heads(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.reg1, self.reg2 = nn.Linear(d, 128), nn.Linear(128, 1)
        self.cls1, self.cls2 = nn.Linear(d, 128), nn.Linear(128, 5)
        self.drop = nn.Dropout(0.1)

    def forward(self, h):
        s = self.reg2(torch.sigmoid(self.reg1(h))).squeeze(-1)
        c = self.cls2(self.drop(torch.tanh(self.cls1(self.drop(h)))))
        return s, c


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args, precision):
    layers, hidden, heads, inter = SHAPES[args.shape]
    config = RobertaConfig(vocab_size=50265, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=inter,
                           max_position_embeddings=args.seq + 2, type_vocab_size=1,
                           pad_token_id=1)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.manual_seed(42)
    encoder = RobertaModel(config, add_pooling_layer=False).to(device).train()
    head = Heads(hidden).to(device).train()
    params = list(encoder.parameters()) + list(head.parameters())
    optim = torch.optim.AdamW(params, lr=1e-5, eps=1e-8, weight_decay=0.01)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.warmup + args.steps):
        ids = torch.randint(5, 50264, (args.batch, args.seq), device=device)
        y = torch.rand(args.batch, device=device) * 2 - 1
        z = torch.randint(0, 5, (args.batch,), device=device)
        sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            h = encoder(input_ids=ids).last_hidden_state[:, 0]
            s, c = head(h)
            loss = 0.9 * ((s.float() - y) ** 2).mean() + 0.1 * nn.functional.cross_entropy(c.float(), z)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {"framework": "pytorch", "shape": args.shape, "precision": precision,
            "batch": args.batch, "seq": args.seq, "device": str(device),
            "step_s": statistics.median(times), "peak_device_bytes": peak}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="roberta-large", choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    rows = [run(args, precision) for precision in args.precision.split(",")]
    for r in rows:
        mem = f"{r['peak_device_bytes'] / 2**30:.2f} GiB" if r["peak_device_bytes"] else "-"
        print(f"pytorch {r['shape']} {r['precision']} b{r['batch']} s{r['seq']} "
              f"{r['device']}: {r['step_s']:.4f} s/step, peak {mem}")
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
