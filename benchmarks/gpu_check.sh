#!/usr/bin/env bash
# The one GPU check of the fast path (docs/performance.md), ≤ 8 minutes on one H100, offline.
# Prepare here:   /work/shared/tools/device-prep.sh      (fills .whl/ and .data/)
# Run there, from the repository root, carrying .whl and .data:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl \
#     && export PYTHONPATH=$PWD/.site:$PWD && bash benchmarks/gpu_check.sh
# Writes equivalence.txt, layer.{txt,json}, train.{txt,json} under $OUT (or ./gpu-check) and
# prints the short table last. Exit status 1 if the CUDA equivalence checks fail.
set -uo pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"
export VQBENCH_NO_PROGRESS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== 1/3 equivalence on CUDA (fused vs plain, fp32 / bf16, compiled eval)"
timeout 120 python3 benchmarks/check_equivalence.py --device cuda 2>&1 | tee "$out/equivalence.txt"
eq=${PIPESTATUS[0]}

echo "== 2/3 layer: fwd+bwd tokens/s and peak MiB vs VectorQuantize, N=65536 C=1024 L=64"
timeout 90 python3 benchmarks/bench_quantizers.py --device cuda --json "$out/layer.json" \
  > "$out/layer.txt" 2>&1 || echo "bench_quantizers failed (exit $?)" >> "$out/layer.txt"

echo "== 3/3 train step: conv32, batch 256, real CIFAR-10 shard, fast path = compile reduce-overhead"
timeout 240 python3 benchmarks/bench_train.py --device cuda --json "$out/train.json" \
  > "$out/train.txt" 2>&1 || echo "bench_train failed (exit $?)" >> "$out/train.txt"

echo
echo "================ summary ================"
tail -n 1 "$out/equivalence.txt"
tail -n 16 "$out/layer.txt"
tail -n 8 "$out/train.txt"
exit $(( eq != 0 ))
