#!/usr/bin/env bash
# The GPU comparison of issue 7: our RoBERTa-large-shape training step (batch 10 × 512) against
# PyTorch's on one lent GPU, both in one call, one table at the end.
#
#   scripts/gpu-bench.sh build       # here: release `xtask` with CUDA → gpu-bundle/
#   scripts/gpu-bench.sh run         # on the GPU machine, with gpu-bundle/ carried along:
#                                    # parity and a short training run on CUDA, then the bench
#   scripts/gpu-bench.sh check       # here, no GPU: the run phase on the CPU with tiny sizes
#
# `build` runs scripts/build-cuda.sh (CARGO_TARGET_DIR defaults to target/cuda, so the CPU
# build in target/ is left alone; the first build takes most of an hour on 2 cores), then puts
# the stripped binaries, the shared libraries they need beyond glibc and libstdc++ (LLVM's z3,
# zstd, xml2, … from Debian: a CUDA image need not have them), the PyTorch script and the tiny
# RoBERTa fixture with its golden values (../shared, or DAO_SHARED_DIR) into gpu-bundle/.
# The GPU machine has no registries and no Rust: it runs only what is bundled.
#
# `run` needs: nvidia-smi, python3 with torch and transformers (the GPU image has both).
# Measured on an H200 (BENCHMARKS.md): parity + the training run + PyTorch ≈ 165 s (the
# training run's first step once took 100 s to compile, hence its 240 s limit); the first
# step of each of our processes compiles and autotunes its kernels (75–125 s per new set of
# kernels: f32, LoRA's, bf16; a later process that needs no new ones starts in ≈ 20 s), so the
# default runs fit one call of about 8 min, the bf16 row last to go when compiling is slow;
# the product rates and inference rows take a second call of about 3 min on the same warm
# machine (PARTS=ours BENCH_RUNS="f32:matmul bf16:matmul f32:infer bf16:infer").
# Environment: BENCH_MODEL (roberta-large), BENCH_SEQ (512), BENCH_BATCH (10),
# BENCH_RUNS ("f32:rowsum f32:constant f32:dao f32:lora8-dao bf16:constant"; also f32:infer, bf16:infer,
# and f32:matmul, bf16:matmul: the rate of burn's product at the step's largest shape;
# f32:rowsum: a bias gradient's sum over the rows, by burn's reduction and as a product;
# f32:linear:cublas the rate of cuBLAS's, checked against burn's; a run's third field picks a
# variant: :cublas takes its weight products from cuBLAS, :profile logs every kernel's device
# time with its grid size (cubecl's profiling logger: every launch in
# OUT/profile-DTYPE-MODE.log.xz, the per-synchronisation summaries in OUT/profile-DTYPE-MODE.txt),
# :tune-full retunes every kernel from scratch at cubecl's widest autotune level
# (CUBECL_AUTOTUNE_LEVEL=full, no cache; each candidate's time in OUT/tune-full-DTYPE-MODE.log.xz),
# :balanced at cubecl's default level, as a run without a variant does unless the caller's
# environment sets CUBECL_AUTOTUNE_LEVEL),
# TORCH_PRECISIONS (fp32,tf32,bf16), OURS_LIMIT (330 s for all of ours), TORCH_LIMIT (90 s),
# OUT (where the JSON goes),
# PARTS (checks,torch,ours: which parts run),
# XTASK and CLI (our binaries; default the bundled ones, else target/release/), PYTHON.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bundle=gpu-bundle

table() {
    # ours.jsonl (one `xtask bench --json` object per line) + torch.json → one table.
    python3 - "$1" "$2" <<'EOF'
import json, sys

ours = {"device": "?", "results": []}
try:
    for line in open(sys.argv[1]):
        if line.startswith("{"):
            one = json.loads(line)
            ours["device"] = one["device"]
            ours["results"] += one["results"]
except OSError:
    pass
try:
    torch = json.load(open(sys.argv[2]))
except (OSError, ValueError):
    torch = []
print(f"ours: {ours['device']}")
ref = {r["precision"]: r for r in torch}
base = ref.get("fp32")
print(f"{'framework':10} {'mode':16} {'precision':9} {'step ms':>9} {'vs torch fp32':>13} "
      f"{'device GiB':>10} {'sentences/s':>11}")
for r in ours["results"]:
    mode = r["mode"] + (f":{r['variant']}" if r.get("variant") else "")
    name = f"{'ours':10} {mode:16} {r.get('dtype', 'f32'):9}"
    if "error" in r:
        print(f"{name} {r['error']}")
        continue
    gib = (r.get("device_mem_bytes") or 0) / 2**30
    if r["mode"] in ("matmul", "linear"):
        print(f"{name} {r['matmul_ms']:>9.3f} ms per product {r['shape']}: {r['tflops']:.3f} TFLOP/s, cublas {r.get('cublas')}, vs burn {r.get('max_rel_deviation_from_burn', 0):.2e}")
        continue
    if r["mode"] == "rowsum":
        print(f"{name} Σ over the rows of {r['shape']}: reduction {r['reduction_ms']:.3f} ms ({r['reduction_gb_per_s']:.0f} GB/s), product {r['product_ms']:.3f} ms ({r['product_gb_per_s']:.0f} GB/s), product vs reduction {r['max_rel_deviation_product']:.1e}")
        continue
    if r["mode"] == "infer":
        print(f"{name} {'':>9} {'':>13} {gib:>10.2f} {r['sentences_per_s']:>11.1f}")
        continue
    ratio = f"{r['step_ms'] / (1e3 * base['step_s']):.2f}x" if base else ""
    print(f"{name} {r['step_ms']:>9.1f} {ratio:>13} {gib:>10.2f}")
for r in torch:
    gib = (r.get("peak_device_bytes") or 0) / 2**30
    ratio = f"{r['step_s'] / base['step_s']:.2f}x" if base else ""
    print(f"{'pytorch':10} {'constant':16} {r['precision']:9} {1e3 * r['step_s']:>9.1f} "
          f"{ratio:>13} {gib:>10.2f}")
EOF
}

case "${1:-}" in
build)
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cuda}"
    bash scripts/build-cuda.sh
    rm -rf "$bundle"
    mkdir -p "$bundle/lib"
    for bin in xtask cli; do
        cp "$CARGO_TARGET_DIR/release/$bin" "$bundle/$bin"
        strip "$bundle/$bin"
        ldd "$bundle/$bin" | awk '/=> \// {print $3}' \
            | grep -v -E '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so' \
            | xargs -r -I{} cp -L {} "$bundle/lib/"
        # The device tool carries at most 64 MiB in all.
        xz -T2 -6 "$bundle/$bin"
    done
    cp scripts/torch_step_bench.py "$bundle/"
    shared="${DAO_SHARED_DIR:-../shared}"
    mkdir -p "$bundle/tiny-roberta"
    cp "$shared"/fixtures/tiny-roberta/{config.json,model.safetensors,tokenizer.json} "$bundle/tiny-roberta/"
    cp "$shared/fixtures/golden.json" "$bundle/"
    du -sh "$bundle"/* "$bundle"
    ;;
run | check)
    out="${OUT:-/tmp/gpu-bench}"
    mkdir -p "$out"
    if [ "$1" = run ]; then
        device=cuda:0 torch_device=cuda
        model="${BENCH_MODEL:-roberta-large}" shape="$model"
        seq="${BENCH_SEQ:-512}" batch="${BENCH_BATCH:-10}"
        runs="${BENCH_RUNS:-f32:rowsum f32:constant f32:dao f32:lora8-dao bf16:constant}"
        precisions="${TORCH_PRECISIONS:-fp32,tf32,bf16}"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    else
        device=cpu torch_device=cpu
        model=minilm shape=tiny seq=16 batch=2 precisions=fp32
        runs="${BENCH_RUNS:-f32:constant f32:dao f32:lora8-dao f32:infer f32:matmul}"
    fi
    unpack() { # $1: binary name → a runnable copy
        if [ -f "$bundle/$1.xz" ]; then
            xz -dc "$bundle/$1.xz" >"/tmp/$1-cuda" && chmod +x "/tmp/$1-cuda" && echo "/tmp/$1-cuda"
        else
            echo "target/release/$1"
        fi
    }
    ours="${XTASK:-$(unpack xtask)}"
    cli="${CLI:-$(unpack cli)}"
    export LD_LIBRARY_PATH="$PWD/$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # cuBLAS for our weight products (loaded at run time): the system's, else PyTorch's wheels'.
    if ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so'; then
        cublas_dir=$("${PYTHON:-python3}" - 2>/dev/null <<'EOF'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages(), "/usr/local/cuda/lib64"]
for root in roots:
    for pattern in ("nvidia/*/lib/libcublas.so*", "nvidia/cu*/lib/libcublas.so*",
                    "torch/lib/libcublas.so*", "libcublas.so*"):
        found = glob.glob(os.path.join(root, pattern))
        if found:
            print(os.path.dirname(found[0]))
            raise SystemExit
EOF
)
        [ -n "$cublas_dir" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$cublas_dir"
        echo "cublas: ${cublas_dir:-not found}"
    fi
    # Each part has its own time limit, so one hanging cannot take the others' results with it.
    set +e
    fixtures="$bundle"
    [ -f "$fixtures/golden.json" ] || fixtures="${DAO_SHARED_DIR:-../shared}/fixtures"
    parts="${PARTS:-checks,torch,ours}"
    if [[ ",$parts," == *,checks,* ]] && [ -f "$fixtures/golden.json" ]; then
        # Parity on the device: H of the tiny RoBERTa against transformers' (golden.json).
        python3 -c 'import json, sys
for text in json.load(open(sys.argv[1]))["sentences"]:
    print(json.dumps({"text": text}))' "$fixtures/golden.json" >"$out/sentences.jsonl"
        timeout 60 "$cli" embed --model "$fixtures/tiny-roberta" --input "$out/sentences.jsonl" \
            --output "$out/embeddings.jsonl" --device "$device" 2>&1 | tail -n 3
        python3 -c 'import json, sys
golden = json.load(open(sys.argv[1]))["H"]["data"]
try:
    ours = [x for line in open(sys.argv[2]) for x in json.loads(line)["embedding"]]
    flat = [x for row in golden for x in row] if isinstance(golden[0], list) else golden
    assert len(flat) == len(ours), (len(flat), len(ours))
    d = max(abs(a - b) for a, b in zip(flat, ours))
    print(f"parity: H of tiny-roberta on {sys.argv[3]}, max |ours - transformers| = {d:.3g}")
except (OSError, ValueError, KeyError, AssertionError) as e:
    print(f"parity: no embeddings ({e})")' "$fixtures/golden.json" "$out/embeddings.jsonl" "$device"
        # The device tool brings back only a few files from OUT: keep it to the results.
        rm -f "$out/sentences.jsonl" "$out/embeddings.jsonl"
        # The whole trainer on the device: one epoch of DAO on the demo data, tiny RoBERTa.
        rm -rf /tmp/gpu-bench-tiny-run
        timeout 240 "$cli" train --config configs/quickstart.toml --out /tmp/gpu-bench-tiny-run \
            --device "$device" --set model.path="$fixtures/tiny-roberta" --set train.epochs=1 \
            >"$out/train.log" 2>&1
        echo "training on $device: exit $?"
        tail -n 4 "$out/train.log"
    fi
    torch_script="$bundle/torch_step_bench.py"
    [ -f "$torch_script" ] || torch_script=scripts/torch_step_bench.py
    [[ ",$parts," == *,torch,* ]] || precisions=""
    [[ ",$parts," == *,ours,* ]] || runs=""
    if [ -n "$precisions" ]; then
        timeout "${TORCH_LIMIT:-90}" "${PYTHON:-python3}" "$torch_script" --shape "$shape" \
            --batch "$batch" --seq "$seq" --device "$torch_device" --precision "$precisions" \
            --json "$out/torch.json" >"$out/torch.log" 2>&1
        echo "pytorch: exit $?"
        tail -n 5 "$out/torch.log"
    fi
    # Ours, one (dtype, mode) per process, most wanted first; each result line is kept as it
    # comes, so a time limit loses only what had not run yet.
    : >"$out/ours.jsonl"
    deadline=$((SECONDS + ${OURS_LIMIT:-330}))
    for run in $runs; do
        # DTYPE:MODE (burn's own products) or DTYPE:MODE:VARIANT (see the header).
        dtype=${run%%:*} mode=${run#*:} variant=""
        case "${mode##*:}" in
        cublas | profile | tune-full | balanced) variant=${mode##*:} mode=${mode%:*} ;;
        esac
        left=$((deadline - SECONDS))
        if [ "$left" -lt 15 ]; then
            echo "ours $dtype $mode $variant: skipped (time limit)"
            continue
        fi
        # cubecl reads cubecl.toml from the working directory; only these variants write one.
        rm -f cubecl.toml
        log="$out/$variant-$dtype-$mode.log"
        level=() # as `env` arguments
        case "$variant" in
        # `full` names each kernel with its id and grid size, so the sizes it ran on show.
        profile) printf '[profiling]\nlogger = { level = "full", file = "%s", append = false }\n' "$log" >cubecl.toml ;;
        tune-full)
            printf '[autotune]\nlogger = { level = "full", file = "%s", append = false }\n' "$log" >cubecl.toml
            level=(CUBECL_AUTOTUNE_LEVEL=full CUBECL_AUTOTUNE_CACHE=0)
            ;;
        balanced) level=(CUBECL_AUTOTUNE_LEVEL=balanced) ;;
        esac
        env "${level[@]}" DAO_CUBLAS=$([ "$variant" = cublas ] && echo 1 || echo 0) \
            timeout "$left" "$ours" bench --device "$device" --model "$model" --modes "$mode" \
            --seq "$seq" --batch "$batch" --dtype "$dtype" --json \
            >"$out/one.jsonl" 2>>"$out/ours.log"
        echo "ours $dtype $mode ${variant:-burn}: exit $? ($((SECONDS)) s into the script)"
        rm -f cubecl.toml
        python3 -c 'import json, sys
for line in open(sys.argv[1]):
    if line.startswith("{"):
        one = json.loads(line)
        for r in one["results"]:
            r["variant"] = sys.argv[2]
        print(json.dumps(one))' "$out/one.jsonl" "$variant" >>"$out/ours.jsonl"
        if [ "$variant" = profile ] && [ -f "$log" ]; then
            # Keep the summaries (one per synchronisation: the last is a steady step), not
            # the line per kernel.
            grep -v '^| [0-9.]*[mnµu]*s *|' "$log" >"$out/profile-$dtype-$mode.txt" || true
            xz -T2 "$log"
        fi
        [ "$variant" = tune-full ] && [ -f "$log" ] && xz -T2 "$log"
    done
    rm -f "$out/one.jsonl"
    tail -n 3 "$out/ours.log"
    set -e
    table "$out/ours.jsonl" "$out/torch.json"
    ;;
*)
    sed -n '2,20p' "$0"
    exit 2
    ;;
esac
