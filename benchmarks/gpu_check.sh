#!/usr/bin/env bash
# The one GPU check of the fast path (docs/performance.md), offline. Stages are time-boxed (graph 50, train 190,
# layer 100, equivalence 80, run 60 s: the default ≤ 8 minutes; profile, 90 s more, when named in STAGES);
# STAGES="train layer equivalence" ≤ 370 s.
# Prepare here:   ../shared/tools/device-prep.sh      (fills .whl/ and .data/)
# Run there, from the repository root, carrying .whl and .data:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl \
#     && export PYTHONPATH=$PWD/.site:$PWD && bash benchmarks/gpu_check.sh
# Writes graph_step.txt, train.{txt,json}, layer.{txt,json}, equivalence.txt under $OUT (or
# ./gpu-check) and prints the short table last. Most telling first, each stage time-boxed,
# so a cut-short run still leaves the end-to-end numbers. Exit 1 if a correctness check fails.
# STAGES (default "graph train layer equivalence run"; add "profile") picks stages; TRAIN_ONLY and LAYER_ONLY
# narrow the variants (bench_train.py / bench_quantizers.py --only), for a second, shorter call.
set -uo pipefail
out=${OUT:-gpu-check}
stages=" ${STAGES:-graph train layer equivalence run} "
on() { [[ "$stages" == *" $1 "* ]]; }
graph=0 eq=0
mkdir -p "$out"
export VQBENCH_NO_PROGRESS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
t0=$SECONDS

if on graph; then
echo "== 1/5 whole-step CUDA graph trains as the eager step does ($((SECONDS - t0)) s)"
timeout 50 python3 benchmarks/check_graph_step.py 2>&1 | tee "$out/graph_step.txt"
graph=${PIPESTATUS[0]}
fi

if on train; then
echo "== 2/5 train step: conv32, batch 256, real CIFAR-10 shard ($((SECONDS - t0)) s)"
timeout 190 python3 benchmarks/bench_train.py --device cuda --budget-s 120 --steps 100 --repeats 5 --json "$out/train.json" \
  ${TRAIN_ONLY:+--only $TRAIN_ONLY} > "$out/train.txt" 2>&1 || echo "bench_train failed (exit $?)" >> "$out/train.txt"
grep -v "^[EWI][0-9]" "$out/train.txt" | tail -n 14
fi

if on layer; then
echo "== 3/5 layer: fwd+bwd tokens/s and peak MiB vs VectorQuantize, N=65536 C=1024 L=64 ($((SECONDS - t0)) s)"
timeout 100 python3 benchmarks/bench_quantizers.py --device cuda --repeats 3 --json "$out/layer.json" --only \
  ${LAYER_ONLY:-VectorQuantize-bf16 gmvq-compiled-bf16 gmvq-triton-3xtf32-bf16 gmvq-triton-3xtf32 gmvq-compiled \
  gmvq-compiled-3xtf32 VectorQuantize-tf32 \
  gmvq gmvq-compiled-tf32 gmvq-plain vqvae vqvae-compiled \
  gmvq-entropy gmvq-bound sqvae gumbel-vqvae vqvae-l2 vqvae-replace vqvae-l2-replace vqvae-affine vqvae-opt \
  vqvae-affine-opt} > "$out/layer.txt" 2>&1 || echo "bench_quantizers failed (exit $?)" >> "$out/layer.txt"
fi

if on equivalence; then
echo "== 4/5 equivalence on CUDA: fused vs reference backend, fp32 / bf16 / TF32, compiled eval ($((SECONDS - t0)) s)"
timeout 80 python3 benchmarks/check_equivalence.py --device cuda > "$out/equivalence.txt" 2>&1
eq=$?
grep -E "^(ok|FAIL|over|equivalence)" "$out/equivalence.txt"
fi

if on run; then
echo "== 5/5 the runner end to end with the graphed step: 2 epochs, real shard, eval ($((SECONDS - t0)) s)"
timeout 60 python3 -m vqbench run --quantizer gmvq --dataset npz data.train=.data/cifar10/train.npz \
  data.test=.data/cifar10/test.npz train.epochs=${RUN_EPOCHS:-2} train.cuda_graph=true train.compile=${RUN_COMPILE:-none} \
  --out /tmp/vqbench-runs --json \
  > "$out/run.json" 2> "$out/run.err"; echo "vqbench run exit $?"; tail -n 3 "$out/run.err"
fi

if on profile; then
echo "== 6 kernel time per step, compiled, no graph: gmvq vs identity ($((SECONDS - t0)) s)"
timeout 90 python3 benchmarks/profile_step.py > "$out/profile.txt" 2>&1 || echo "profile failed (exit $?)" >> "$out/profile.txt"
grep -v "^[EWI][0-9]" "$out/profile.txt" | grep -A19 "^# "
fi

echo
echo "================ summary ($((SECONDS - t0)) s) ================"
for f in graph_step equivalence; do [ -f "$out/$f.txt" ] && tail -n 1 "$out/$f.txt"; done
[ -f "$out/layer.txt" ] && grep -v "^[EWI][0-9]" "$out/layer.txt" | grep -A40 "^# layer"
[ -f "$out/train.txt" ] && grep -v "^[EWI][0-9]" "$out/train.txt" | grep -A20 "^# conv32"
python3 -c "import json,sys; d=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print('run:', {k: d.get(k) for k in ('status','steps','mse','mean_image_mse','perplexity','codes_used','images_per_s')})" "$out/run.json" 2>/dev/null || echo "run: no summary"
exit $(( graph != 0 || eq != 0 ))
