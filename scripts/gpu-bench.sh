#!/usr/bin/env bash
# The GPU comparison of issue 7: our RoBERTa-large-shape training step (batch 10 × 512) against
# PyTorch's on one lent GPU, both in one call, one table at the end.
#
#   scripts/gpu-bench.sh build       # here: release `xtask` with CUDA → gpu-bundle/
#   scripts/gpu-bench.sh run         # on the GPU machine, with gpu-bundle/ carried along
#   scripts/gpu-bench.sh check       # here, no GPU: the run phase on the CPU with tiny sizes
#
# `build` runs scripts/build-cuda.sh (CARGO_TARGET_DIR defaults to target/cuda, so the CPU
# build in target/ is left alone; the first build takes most of an hour on 2 cores), then puts
# the stripped binary, the shared libraries it needs beyond glibc and libstdc++ (LLVM's z3,
# zstd, xml2, … from Debian: a CUDA image need not have them) and the PyTorch script into
# gpu-bundle/. The GPU machine has no registries and no Rust: it runs only what is bundled.
#
# `run` needs: nvidia-smi, python3 with torch and transformers (the GPU image has both).
# Environment: BENCH_MODEL (roberta-large), BENCH_SEQ (512), BENCH_BATCH (10),
# BENCH_DTYPES (f32,bf16), TORCH_PRECISIONS (fp32,tf32,bf16), OUT (where the JSON goes),
# XTASK (our binary; default the bundled one, else target/release/xtask), PYTHON (python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bundle=gpu-bundle

table() {
    # ours.json (xtask bench --json) + torch.json (torch_step_bench.py --json) → one table.
    python3 - "$1" "$2" <<'EOF'
import json, sys

ours = json.load(open(sys.argv[1])) if sys.argv[1] != "-" else {"device": "?", "results": []}
try:
    torch = json.load(open(sys.argv[2]))
except (OSError, ValueError):
    torch = []
print(f"ours: {ours['device']}")
ref = {r["precision"]: r for r in torch}
base = ref.get("fp32")
print(f"{'framework':10} {'mode':10} {'precision':9} {'step ms':>9} {'vs torch fp32':>13} "
      f"{'device GiB':>10} {'sentences/s':>11}")
for r in ours["results"]:
    name = f"{'ours':10} {r['mode']:10} {r.get('dtype', 'f32'):9}"
    if "error" in r:
        print(f"{name} {r['error']}")
        continue
    gib = (r.get("device_mem_bytes") or 0) / 2**30
    if r["mode"] == "infer":
        print(f"{name} {'':>9} {'':>13} {gib:>10.2f} {r['sentences_per_s']:>11.1f}")
        continue
    ratio = f"{r['step_ms'] / (1e3 * base['step_s']):.2f}x" if base else ""
    print(f"{name} {r['step_ms']:>9.1f} {ratio:>13} {gib:>10.2f}")
for r in torch:
    gib = (r.get("peak_device_bytes") or 0) / 2**30
    ratio = f"{r['step_s'] / base['step_s']:.2f}x" if base else ""
    print(f"{'pytorch':10} {'constant':10} {r['precision']:9} {1e3 * r['step_s']:>9.1f} "
          f"{ratio:>13} {gib:>10.2f}")
EOF
}

case "${1:-}" in
build)
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cuda}"
    bash scripts/build-cuda.sh
    rm -rf "$bundle"
    mkdir -p "$bundle/lib"
    cp "$CARGO_TARGET_DIR/release/xtask" "$bundle/xtask"
    strip "$bundle/xtask"
    ldd "$bundle/xtask" | awk '/=> \// {print $3}' \
        | grep -v -E '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so' \
        | xargs -r -I{} cp -L {} "$bundle/lib/"
    cp scripts/torch_step_bench.py "$bundle/"
    # The device tool carries at most 64 MiB: compress when the binary alone is near that.
    if [ "$(stat -c %s "$bundle/xtask")" -gt $((40 * 1024 * 1024)) ]; then
        xz -T2 -6 "$bundle/xtask"
    fi
    du -sh "$bundle"/* "$bundle"
    ;;
run | check)
    out="${OUT:-/tmp/gpu-bench}"
    mkdir -p "$out"
    if [ "$1" = run ]; then
        device=cuda:0 torch_device=cuda
        model="${BENCH_MODEL:-roberta-large}" shape="$model"
        seq="${BENCH_SEQ:-512}" batch="${BENCH_BATCH:-10}"
        dtypes="${BENCH_DTYPES:-f32,bf16}" precisions="${TORCH_PRECISIONS:-fp32,tf32,bf16}"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    else
        device=cpu torch_device=cpu
        model=minilm shape=tiny seq=16 batch=2 dtypes=f32 precisions=fp32
    fi
    if [ -n "${XTASK:-}" ]; then
        ours="$XTASK"
    elif [ -f "$bundle/xtask.xz" ]; then
        xz -dc "$bundle/xtask.xz" >/tmp/xtask-cuda && chmod +x /tmp/xtask-cuda
        ours=/tmp/xtask-cuda
    elif [ -x "$bundle/xtask" ]; then
        ours="$bundle/xtask"
    else
        ours=target/release/xtask
    fi
    export LD_LIBRARY_PATH="$PWD/$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # Each side has its own time limit, so one hanging cannot take the other's result with it.
    set +e
    timeout "${OURS_LIMIT:-330}" "$ours" bench --device "$device" --model "$model" \
        --modes constant,dao,lora8-dao,infer --seq "$seq" --batch "$batch" --dtype "$dtypes" \
        --json >"$out/ours.json" 2>"$out/ours.log"
    echo "ours: exit $?"
    tail -n 5 "$out/ours.log"
    torch_script="$bundle/torch_step_bench.py"
    [ -f "$torch_script" ] || torch_script=scripts/torch_step_bench.py
    timeout "${TORCH_LIMIT:-120}" "${PYTHON:-python3}" "$torch_script" --shape "$shape" \
        --batch "$batch" --seq "$seq" --device "$torch_device" --precision "$precisions" \
        --json "$out/torch.json" >"$out/torch.log" 2>&1
    echo "pytorch: exit $?"
    tail -n 5 "$out/torch.log"
    set -e
    if [ -s "$out/ours.json" ]; then table "$out/ours.json" "$out/torch.json"; else table - "$out/torch.json"; fi
    ;;
*)
    sed -n '2,17p' "$0"
    exit 2
    ;;
esac
