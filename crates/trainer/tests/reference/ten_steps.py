#!/usr/bin/env python3
r"""Reference values of `tests/ten_steps.rs`: ten training steps of the PyTorch reference of the
method (`../shared/peer/dao_ref.py`, imported from where it lies, never copied here) on
tiny-roberta with every dropout at 0, one batch of 16 rows per epoch, in float64 (a yardstick
free of rounding for our float32 steps).

The heads, LoRA factors and DAO network start from the weights our trainer draws from its seed:
a run of one epoch (whose single update has learning rate 0, the warm-up's first, and whose DAO
learning rate is 1e-30) leaves them in its `checkpoints/last`, read here with `burnpack.py`.

    # MODEL: a copy of fixtures/tiny-roberta with hidden_dropout_prob and
    # attention_probs_dropout_prob set to 0; HERE: this folder; SHARED: ../shared.
    for mode in constant dao lora; do
      cli train --config HERE/ten_steps.toml --set model.path=MODEL \
          --set data.train=HERE/ten_steps_train.jsonl --set data.valid=HERE/ten_steps_valid.jsonl \
          $(extra $mode) --set train.epochs=1 --set dao.lr=1e-30 --out init-$mode
      python3 ten_steps.py $mode MODEL init-$mode SHARED > $mode.json
    done   # then ten_steps.json = {"constant": constant.json, "dao": …, "lora": …}

extra: constant → weighting.strategy=constant; dao → weighting.strategy=dao; lora → also
train.finetune=lora. Needs torch, transformers, tokenizers, numpy (scripts/peer-bench.sh builds
such a venv).
"""
import json
import math
import os
import sys

import numpy as np
import torch

MODE, MODEL, INIT, SHARED = sys.argv[1:5]
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(SHARED, "peer"))
sys.path.insert(0, HERE)
import burnpack  # noqa: E402
import dao_ref  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
F64 = True
ATTN = "eager"
STEPS = 10
LR, WARMUP, MAX_LEN, WC = 1e-3, 2, 64, 0.1


def load_jsonl(path):
    texts, ys = [], []
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            texts.append(r["text"])
            ys.append(r["score"])
    return texts, torch.tensor(ys, dtype=torch.float32)


def encode(tok, texts):
    enc = tok.encode_batch(texts)
    return (torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc]))


def rust_to_torch(name, arr):
    """burn Linear weights are [in, out]; torch's are [out, in]."""
    a = torch.from_numpy(np.ascontiguousarray(arr))
    if name.endswith(".weight") and a.dim() == 2 and "embeddings" not in name:
        a = a.t().contiguous()
    return a


def main():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    tok.enable_truncation(MAX_LEN)
    tok.enable_padding(pad_id=1, pad_token="<pad>")
    texts, y = load_jsonl(os.path.join(HERE, "ten_steps_train.jsonl"))
    vtexts, vy = load_jsonl(os.path.join(HERE, "ten_steps_valid.jsonl"))
    ids, mask = encode(tok, texts)
    vids, vmask = encode(tok, vtexts)

    model = dao_ref.build_model(model_dir=MODEL, attn_implementation=ATTN)
    assert model.encoder.config.hidden_dropout_prob == 0.0
    assert model.encoder.config.attention_probs_dropout_prob == 0.0
    model.classification_head.dp1.p = 0.0
    model.classification_head.dp2.p = 0.0
    if MODE == "lora":
        model.encoder = dao_ref.apply_lora(model.encoder, r=4, alpha=4, dropout=0.0)

    init, _, _, _ = burnpack.read(os.path.join(INIT, "checkpoints/last/model.bpk"))
    sd = model.state_dict()
    loaded = 0
    # heads
    for k, v in init.items():
        if k.startswith("heads."):
            name = k[len("heads."):]
            assert sd[name].shape == rust_to_torch(name, v).shape, (k, sd[name].shape, v.shape)
            sd[name] = rust_to_torch(name, v)
            loaded += 1
    enc_check = {}
    if MODE == "lora":
        for k, v in init.items():
            if ".adapter." not in k:
                continue
            # encoder.encoder.layer.0.attention.self_attention.query.adapter.lora_a.weight
            mod = k[len("encoder.encoder."):].split(".adapter.")[0]
            mod = mod.replace("self_attention", "self")
            which = "lora_A" if ".lora_a." in k else "lora_B"
            name = f"encoder.base_model.model.encoder.{mod}.{which}.default.weight"
            t = torch.from_numpy(np.ascontiguousarray(v)).t().contiguous()
            assert sd[name].shape == t.shape, (name, sd[name].shape, t.shape)
            sd[name] = t
            loaded += 1
    else:
        # the encoder in the init checkpoint must be the model folder's weights (lr 0 at step 1)
        for k, v in init.items():
            if not k.startswith("encoder."):
                continue
            name = k.replace(".base.", ".").replace("self_attention", "self")
            name = name.replace("layer_norm.gamma", "LayerNorm.weight").replace("layer_norm.beta", "LayerNorm.bias")
            t = rust_to_torch(name, v)
            enc_check[name] = float((t - sd[name]).abs().max())
    model.load_state_dict(sd)
    n_lora = sum(1 for k in sd if "lora_" in k)
    print(f"loaded {loaded} tensors from the init checkpoint; lora tensors in torch model: {n_lora}", file=sys.stderr)
    if enc_check:
        print("init checkpoint encoder vs model folder: max |diff| =", max(enc_check.values()),
              "over", len(enc_check), "tensors", file=sys.stderr)

    dao = dao_ref.DAOModule()
    if MODE in ("dao", "lora"):
        w, _, _, _ = burnpack.read(os.path.join(INIT, "checkpoints/last/weighting.bpk"))
        with torch.no_grad():
            for n in ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]:
                getattr(dao, n.split(".")[0]).__getattr__(n.split(".")[1]).copy_(rust_to_torch(n, w[n]))
        print("a_raw torch", dao.a_raw.item(), "rust ckpt", float(w["alpha_beta.a_raw"][0]),
              "; b_raw torch", dao.b_raw.item(), "rust ckpt (after a 1e-30 Adam step)",
              float(w["alpha_beta.b_raw"][0]), file=sys.stderr)

    if F64:
        model.double()
        dao.double()
        y, vy = y.double(), vy.double()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    cfg = dao_ref.TrainConfig(loss="const" if MODE == "constant" else "dao", lr=LR,
                              warmup_steps=WARMUP, total_steps=STEPS, const_w_c=WC)
    tr = dao_ref.Trainer(model, cfg, dao)
    print("trainable tensors:", len(trainable), file=sys.stderr)

    rows = []
    for step in range(STEPS):
        lr_f64 = tr.opt.param_groups[0]["lr"]  # the LR this step uses, as a Python float
        out = tr.step(ids, mask, y)
        r = dict(step=step + 1, lr=lr_f64, loss_total=out["loss"].item(),
                 loss_reg=out["l_r"].item(), loss_cls=out["l_c"].item())
        if MODE == "constant":
            r.update(w_reg=1.0 - WC, w_cls=WC)
        else:
            r.update(loss_imb=out["l_imb"].item(), lambda_reg=out["lambda_r"].item(),
                     lambda_cls=out["lambda_c"].item(), w_reg=out["w"][0].item(),
                     w_cls=out["w"][1].item(), alpha=out["alpha"].item(), beta=out["beta"].item(),
                     g_r_norm=out["g_r_norm"].item(), g_c_norm=out["g_c_norm"].item())
        rows.append(r)
        print(" ".join(f"{k}={v:.9g}" for k, v in r.items()), file=sys.stderr)

    model.eval()
    with torch.no_grad():
        _, s, c = model(vids, vmask)
        s = s.reshape(-1).double()
        err = s - vy.double()
        mse = float((err ** 2).mean())
        mae = float(err.abs().mean())
        acc = float((c.argmax(-1) == dao_ref.score_to_label(vy)).double().mean())
    metrics = dict(mse=mse, mae=mae, rmse=math.sqrt(mse), accuracy=acc)
    print("valid", metrics, file=sys.stderr)

    json.dump(dict(rows=rows, metrics=metrics), sys.stdout, indent=1)


if __name__ == "__main__":
    main()
