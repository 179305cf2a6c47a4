#!/usr/bin/env bash
# The GPU paths in one go: the CUDA tests, then training and generation speed against their peers.
# Run from the repository root on a machine with a CUDA device; logs go to $OUT (default runs/gpu-check).
#   bash bench/gpu_check.sh
set -u
out="${OUT:-runs/gpu-check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python3}"
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "   exit $? after $((SECONDS - start)) s"
    tail -n 12 "$out/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
step tests 150 "$python" -m pytest -q -p no:cacheprovider tests/test_gpu.py
step train_small 120 "$python" bench/bench_train.py --preset small --seq-len 1024 --batch-size 16 --steps 20 --compile
step train_1.3b 170 "$python" bench/bench_train.py --preset deepseek-coder-1.3b --seq-len 2048 --batch-size 4 --steps 10
step generate 110 "$python" bench/bench_generate.py --new-tokens 128
