#!/usr/bin/env bash
# The one GPU check of the fast path (docs/performance.md), ≤ 7 minutes on one H100, offline.
# Prepare here:   ../shared/tools/device-prep.sh      (fills .whl/ and .data/)
# Run there, from the repository root, carrying .whl and .data:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl \
#     && export PYTHONPATH=$PWD/.site:$PWD && bash benchmarks/gpu_check.sh
# Writes graph_step.txt, train.{txt,json}, layer.{txt,json}, equivalence.txt under $OUT (or
# ./gpu-check) and prints the short table last. Most telling first, each stage time-boxed,
# so a cut-short run still leaves the end-to-end numbers. Exit 1 if a correctness check fails.
set -uo pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"
export VQBENCH_NO_PROGRESS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
t0=$SECONDS

echo "== 1/4 whole-step CUDA graph trains as the eager step does ($((SECONDS - t0)) s)"
timeout 60 python3 benchmarks/check_graph_step.py 2>&1 | tee "$out/graph_step.txt"
graph=${PIPESTATUS[0]}

echo "== 2/4 train step: conv32, batch 256, real CIFAR-10 shard ($((SECONDS - t0)) s)"
timeout 220 python3 benchmarks/bench_train.py --device cuda --budget-s 130 --json "$out/train.json" \
  > "$out/train.txt" 2>&1 || echo "bench_train failed (exit $?)" >> "$out/train.txt"
tail -n 12 "$out/train.txt"

echo "== 3/4 layer: fwd+bwd tokens/s and peak MiB vs VectorQuantize, N=65536 C=1024 L=64 ($((SECONDS - t0)) s)"
timeout 110 python3 benchmarks/bench_quantizers.py --device cuda --repeats 3 --json "$out/layer.json" --only \
  VectorQuantize-tf32 gmvq gmvq-tf32 gmvq-compiled gmvq-compiled-tf32 gmvq-plain vqvae vqvae-compiled \
  gmvq-entropy gmvq-bound sqvae gumbel-vqvae vqvae-l2 vqvae-replace vqvae-l2-replace vqvae-affine vqvae-opt \
  vqvae-affine-opt lucid-vq-ema lucid-fsq \
  > "$out/layer.txt" 2>&1 || echo "bench_quantizers failed (exit $?)" >> "$out/layer.txt"

echo "== 4/4 equivalence on CUDA: fused vs plain, fp32 / bf16 / TF32, compiled eval ($((SECONDS - t0)) s)"
timeout 90 python3 benchmarks/check_equivalence.py --device cuda 2>&1 | tee "$out/equivalence.txt"
eq=${PIPESTATUS[0]}

echo
echo "================ summary ($((SECONDS - t0)) s) ================"
tail -n 1 "$out/graph_step.txt"
tail -n 1 "$out/equivalence.txt"
tail -n 26 "$out/layer.txt"
tail -n 12 "$out/train.txt"
exit $(( graph != 0 || eq != 0 ))
