#!/usr/bin/env python3
"""Reference first-token states (H) of all-MiniLM-L6-v2 for `tests/minilm.rs`.

An independent float64 NumPy implementation of Hugging Face's `BertModel` forward pass (eval
mode: no dropout), reading `model.safetensors` and `tokenizer.json` directly. It shares no
code with the Rust encoder, so agreement checks the weight mapping, the position and token
type handling and the attention mask of ours.

    pip install numpy safetensors tokenizers
    python3 minilm_reference.py MODEL_DIR > minilm_reference.json
"""
import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "Shares of Acme Corp jumped 12% after the company raised its full-year profit forecast.",
    "The bank warned that rising loan defaults would weigh on earnings.",
    "Revenue was flat.",
]
PAIR = ("Oil slipped to $71.20 a barrel as traders fear weaker demand", "Brent")


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def bert(weights, config, ids, types, mask):
    w = {k.removeprefix("bert."): v.astype(np.float64) for k, v in weights.items()}
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    batch, seq = ids.shape
    positions = np.arange(seq)[None, :].repeat(batch, 0)
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][positions]
         + w["embeddings.token_type_embeddings.weight"][types])
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    bias = (1.0 - mask[:, None, None, :]) * -1e30
    d = x.shape[-1]
    hd = d // heads

    def lin(t, name):
        return t @ w[name + ".weight"].T + w[name + ".bias"]

    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        split = lambda t: t.reshape(batch, seq, heads, hd).transpose(0, 2, 1, 3)
        q = split(lin(x, p + "attention.self.query"))
        k = split(lin(x, p + "attention.self.key"))
        v = split(lin(x, p + "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
        scores -= scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, d)
        x = layer_norm(lin(ctx, p + "attention.output.dense") + x,
                       w[p + "attention.output.LayerNorm.weight"],
                       w[p + "attention.output.LayerNorm.bias"], eps)
        h = gelu(lin(x, p + "intermediate.dense"))
        x = layer_norm(lin(h, p + "output.dense") + x,
                       w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    return x


def main():
    folder = sys.argv[1]
    config = json.load(open(f"{folder}/config.json"))
    tokenizer = Tokenizer.from_file(f"{folder}/tokenizer.json")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    weights = load_file(f"{folder}/model.safetensors")
    encodings = [tokenizer.encode(s) for s in SENTENCES] + [tokenizer.encode(*PAIR)]
    seq = max(len(e.ids) for e in encodings)
    pad = config["pad_token_id"]
    ids = np.full((len(encodings), seq), pad)
    types = np.zeros_like(ids)
    mask = np.zeros((len(encodings), seq))
    for r, e in enumerate(encodings):
        ids[r, :len(e.ids)] = e.ids
        types[r, :len(e.ids)] = e.type_ids
        mask[r, :len(e.ids)] = 1
    hidden = bert(weights, config, ids, types, mask)
    out = {
        "sentences": SENTENCES,
        "pair": list(PAIR),
        "input_ids": ids.tolist(),
        "token_type_ids": types.tolist(),
        "H": [[float(np.float32(v)) for v in row] for row in hidden[:, 0, :]],
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
