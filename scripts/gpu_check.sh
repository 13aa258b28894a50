#!/usr/bin/env bash
# One prepared GPU session (see docs/performance.md): kernel tests, flux158.kernels.bench, experiment=latency.
# Sized for a 15-minute lease, one PART per call: PART=kernels ~8-9 min (more compile tests and M values since
# the last run), latency_eager ~3.5 min, latency_compiled ~4 min (H200);
# not in all, never run yet: PART=graphs (~5 min) kernels replayed from CUDA graphs and the host/device split of
# small-M calls; PART=graph_latency (~3 min) eager steps with and without a captured CUDA graph; PART=pipeline_memory
# (~6 min, a guess) whole 50-step 1024² generations with random weights, BF16 / W2A16 / W1.58A8 fp8, each with
# everything resident, with the text encoders offloaded, and from cached embeddings (peak allocated and reserved,
# time per image); TINY=1 runs it at tiny shapes (the CPU check).
# A lease of 15 device minutes (the start included) holds about one full PART=kernels call plus one short one, so
# PART=lease (~9 min, never run yet) answers the open question first in one call: GPU kernel tests, a fresh eager
# table from the current backends (fewer M values), and the 1024² eager step timed with that table.
# PART=rehearsal (~10 min, never run yet; resumable: the same call again goes on where the last stopped) runs
# experiment=rehearsal at FLUX.1-dev's shapes with random weights: calibrate, quantize (absmean, gptq, distill on
# a short schedule), generate and evaluate a few GenEval / T2I-CompBench prompts, and copies resources.json/md (the
# measured unit costs and the paper run's plan) to $OUT. TINY=1 runs the same at tiny shapes (the CPU check).
# PART=e2e_eager / PART=e2e_compiled (never run yet; sized by guess at under 10 min each) time whole 50-step 1024²
# generations (T5, CLIP, transformer, VAE) beside the transformer steps, with and without CUDA-graph replay, for
# BF16, W2A16 and W1.58A8 fp8; e2e_eager also runs the gpu tests that graphed images match eager ones (PSNR).
# PART=toyworld_large (never run yet; ~6 min training (a guess), then FP and distill scored on it; TINY=1 for the CPU
# check) trains issue 17's 4.3x toy model and copies it and its metrics to $OUT.
#   PART=lease|kernels|latency_eager|latency_compiled|graphs|graph_latency|pipeline_memory|toyworld_large|e2e_eager|e2e_compiled|rehearsal|all
#   bash scripts/gpu_check.sh
# Needs diffusers / hydra-core / omegaconf where the GPU image lacks them: wheels in .whl/ are installed first.
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"  # default ./gpu_out
PART=${PART:-all}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv \
  | tee -a "$OUT/env.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/env.txt"
if [[ $PART == lease ]]; then  # does `auto` (with a table of today's backends) beat the fused kernels per step?
  timeout "${T_TESTS:-150}" python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py -m gpu -x 2>&1 \
    | tail -25 | tee "$OUT/gpu_tests.log"
  timeout "${T_BENCH:-240}" python3 -m flux158.kernels.bench --m 1 16 512 4096 4608 --rep-ms 40 \
    --out "$OUT/kernels_bench.csv" --table "$OUT/backend_table.json" 2>&1 | tee "$OUT/bench.log" | tail -40
  python3 -m flux158.kernels.bench.step "$OUT/kernels_bench.csv" 2>&1 | tee "$OUT/step_estimate.log"
  [[ -s $OUT/backend_table.json ]] && export FLUX158_KERNEL_TABLE=$(realpath "$OUT/backend_table.json")
  timeout "${T_LAT:-150}" python3 run.py experiment=latency logger=none hydra.run.dir=/tmp/hydra-lease \
    paths.output_dir=/tmp/gpu-check-lease \
    'latency.variants=[bf16,w2a16,w2a16_fused,w158a8_fp8,w158a8_fp8_fused]' 'latency.compile=[false]' \
    'latency.resolutions=[1024]' latency.steps=20 latency.end_to_end=false 2>&1 \
    | grep -E "latency|Error|error" | tee "$OUT/latency_eager.log"
  cp /tmp/gpu-check-lease/latency/*/metrics.json "$OUT/latency_eager.json" 2>/dev/null
fi
if [[ $PART == kernels || $PART == all ]]; then
  timeout "${T_TESTS:-240}" python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py -m "gpu or not gpu" \
    -x 2>&1 | tail -25 | tee "$OUT/gpu_tests.log"
  timeout "${T_BENCH:-300}" python3 -m flux158.kernels.bench --rep-ms "${REP_MS:-60}" --out "$OUT/kernels_bench.csv" \
    --table "$OUT/backend_table.json" \
    2>&1 | tee "$OUT/bench.log" | tail -80
  python3 -m flux158.kernels.bench.step "$OUT/kernels_bench.csv" 2>&1 | tee "$OUT/step_estimate.log"
fi
if [[ $PART == latency_eager || $PART == all ]]; then
  timeout "${T_LAT:-200}" python3 run.py experiment=latency logger=none hydra.run.dir=/tmp/hydra-eager \
    paths.output_dir=/tmp/gpu-check-eager \
    "latency.variants=${VARIANTS_EAGER:-[bf16,w2a16,w2a16_fused,w158a8_int8,w158a8_fp8,w158a8_fp8_fused]}" \
    'latency.compile=[false]' latency.end_to_end=false \
    2>&1 \
    | grep -E "latency|Error|error" | tee "$OUT/latency_eager.log"
  cp /tmp/gpu-check-eager/latency/*/metrics.json "$OUT/latency_eager.json" 2>/dev/null
fi
if [[ $PART == latency_compiled || $PART == all ]]; then
  timeout "${T_LATC:-300}" python3 run.py experiment=latency logger=none hydra.run.dir=/tmp/hydra-compiled \
    paths.output_dir=/tmp/gpu-check-compiled \
    "latency.variants=${VARIANTS:-[bf16,w2a16,w2a16_fused,w158a8_fp8,w158a8_fp8_fused]}" 'latency.compile=[true]' \
    "latency.resolutions=${RES:-[1024]}" latency.end_to_end=false 2>&1 \
    | grep -E "latency|Error|error" | tee "$OUT/latency_compiled.log"
  cp /tmp/gpu-check-compiled/latency/*/metrics.json "$OUT/latency_compiled.json" 2>/dev/null
fi
if [[ $PART == graphs ]]; then  # kernels replayed from CUDA graphs (the graph-timed backend table), host/device split
  timeout "${T_GRAPH_BENCH:-240}" python3 -m flux158.kernels.bench --cuda-graph --rotate 32 --rep-ms 30 \
    --out "$OUT/kernels_bench_graph.csv" --table "$OUT/backend_table.graph.json" \
    2>&1 | tee "$OUT/bench_graph.log" | tail -40
  timeout "${T_OVERHEAD:-60}" python3 -m flux158.kernels.bench --overhead --m 1 16 --rep-ms 20 --shapes qkvo mod_double \
    --out "$OUT/kernels_bench_overhead.csv" 2>&1 | tee "$OUT/bench_overhead.log" | tail -30
fi
if [[ $PART == graph_latency ]]; then  # eager steps with and without a CUDA graph
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_latency.py tests/test_kernels.py -m gpu \
    -k 'graph or overhead' 2>&1 | tail -5 | tee "$OUT/gpu_graph_tests.log"
  timeout "${T_GRAPH_LAT:-150}" python3 run.py experiment=latency logger=none hydra.run.dir=/tmp/hydra-graph \
    paths.output_dir=/tmp/gpu-check-graph \
    'latency.variants=[bf16,w2a16,w158a8_int8]' 'latency.compile=[false]' 'latency.cuda_graph=[false,true]' \
    'latency.resolutions=[1024]' latency.end_to_end=false "latency.batched_modulation=${BATCHED:-false}" 2>&1 \
    | grep -E "latency|Error|error" | tee "$OUT/latency_graph.log"
  cp /tmp/gpu-check-graph/latency/*/metrics.json "$OUT/latency_graph.json" 2>/dev/null
fi
if [[ $PART == e2e_eager || $PART == e2e_compiled ]]; then  # whole generations, end to end (Table 3's protocol)
  COMPILE=$([[ $PART == e2e_compiled ]] && echo true || echo false)
  if [[ $PART == e2e_eager ]]; then
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_latency.py -m gpu 2>&1 \
      | tail -5 | tee "$OUT/gpu_graph_tests.log"
  fi
  timeout "${T_E2E:-420}" python3 run.py experiment=latency logger=none hydra.run.dir=/tmp/hydra-$PART \
    paths.output_dir=/tmp/gpu-check-$PART "latency.variants=${VARIANTS:-[bf16,w2a16,w158a8_fp8]}" \
    "latency.compile=[$COMPILE]" 'latency.cuda_graph=[false,true]' 'latency.resolutions=[1024]' \
    latency.end_to_end=true 2>&1 | grep -E "latency|Error|error" | tee "$OUT/$PART.log"
  cp /tmp/gpu-check-$PART/latency/*/metrics.json "$OUT/$PART.json" 2>/dev/null
fi
if [[ $PART == pipeline_memory ]]; then  # whole-pipeline peak and time per 1024² image in 3 memory modes (issue 22)
  ARGS=()
  [[ ${TINY:-0} == 1 ]] && ARGS+=(model=tiny 'latency.resolutions=[32]' latency.steps=2 latency.text_tokens=8)
  timeout "${T_PIPE:-540}" python3 run.py experiment=latency logger=none hydra.run.dir=/tmp/hydra-pipe \
    paths.output_dir=/tmp/gpu-check-pipe "latency.variants=${VARIANTS:-[bf16,w2a16,w158a8_fp8]}" \
    'latency.compile=[false]' 'latency.resolutions=[1024]' latency.warmup=1 latency.end_to_end=true \
    'latency.memory_modes=[resident,encoders_offloaded,cached_embeddings]' "${ARGS[@]}" 2>&1 \
    | grep -E "latency|Error|error" | tee "$OUT/pipeline_memory.log"
  cp /tmp/gpu-check-pipe/latency/*/metrics.json "$OUT/pipeline_memory.json" 2>/dev/null
fi
if [[ $PART == toyworld_large ]]; then  # issue 17 point 5: train the 4.3x toy model, then FP and distill on it
  # Resumable: with TOY_DIR on carried storage, a second call continues training where the first stopped.
  TOY=${TOY_DIR:-/tmp/gpu-check-toy}; ARGS=(); EVAL=()
  [[ ${TINY:-0} == 1 ]] && ARGS+=(toyworld.train.steps=4 toyworld.train.batch_size=4 toyworld.train.sample_every=4) \
    && EVAL+=(benchmark.per_tag=1 benchmark.samples_per_prompt=1 calib.num_prompts=4 calib.heldout=2)
  timeout "${T_TOY_TRAIN:-360}" python3 run.py experiment=toyworld_train_large logger=none paths.output_dir="$TOY" \
    hydra.run.dir=/tmp/hydra-toy-train "${ARGS[@]}" 2>&1 | grep -vE "it/s\]|step/s\]" | tail -20 \
    | tee "$OUT/toyworld_large_train.log"
  DONE=$(ls "$TOY"/toyworld_train/*/.done 2>/dev/null | head -1)  # only a finished training is scored
  MODEL=${DONE:+$(dirname "$DONE")/model}
  if [[ -n $MODEL ]]; then
    cp -r "$MODEL" "$OUT/toyworld_large_model"
    # One run per method, bf16 first (the reference of the others' retention). Not one multirun: a distill-only
    # override (the TINY schedule) cannot be composed into the bf16 job.
    for q in ${TOY_METHODS:-bf16 distill}; do
      STEPS=(); [[ ${TINY:-0} == 1 && $q == distill ]] \
        && STEPS+=(quant.config.distill.block_steps=2 quant.config.distill.e2e_steps=2)
      timeout "${T_TOY_EVAL:-200}" python3 run.py experiment=toyworld logger=none paths.output_dir="$TOY" \
        hydra.run.dir="/tmp/hydra-toy-eval-$q" model.pretrained="$MODEL" "quant=$q" "${EVAL[@]}" "${STEPS[@]}" 2>&1 \
        | grep -E "evaluate: overall|Error|error" | tee -a "$OUT/toyworld_large_eval.log"
    done
    for m in "$TOY"/evaluate/toyworld/*/metrics.json; do
      [[ -e $m ]] && cp "$m" "$OUT/toyworld_large_$(basename "$(dirname "$m")").json"
    done
  fi
fi
if [[ $PART == rehearsal ]]; then  # every stage at FLUX.1-dev's shapes, measured, and the paper run's resource plan
  ARGS=()
  [[ ${TINY:-0} == 1 ]] && ARGS+=(model.spec.architecture=tiny sampler=tiny model.dtype=float32)
  python3 -c "import mmdet" 2>/dev/null || ARGS+=(rehearsal.benchmark.geneval.detector=hf)  # no mmcv on the image
  MIRROR=${PROMPT_MIRROR:-$PWD/shared/benchmarks}; [[ -d $MIRROR ]] || MIRROR=$PWD/../shared/benchmarks
  timeout "${T_REHEARSAL:-540}" python3 run.py experiment=rehearsal logger=none hydra.run.dir=/tmp/hydra-rehearsal \
    paths.output_dir="${REHEARSAL_DIR:-outputs/gpu-rehearsal}" paths.prompt_mirror="$MIRROR" \
    "rehearsal.methods=${METHODS:-[absmean,gptq,distill]}" "rehearsal.generate=${GENERATE:-[bf16,distill]}" \
    'rehearsal.benchmark.t2i_compbench.categories=[color,numeracy]' "${ARGS[@]}" 2>&1 \
    | grep -E "rehearsal|Error|error" | tee -a "$OUT/rehearsal.log"
  cp "${REHEARSAL_DIR:-outputs/gpu-rehearsal}"/rehearsal/*/resources.* "$OUT/" 2>/dev/null
fi
