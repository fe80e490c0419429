#!/usr/bin/env bash
# The GPU benchmarks and the predictor study in one call on one GPU, within BUDGET seconds (default 540, ~9 minutes): today's figures beside the
# PyTorch peer (eager and torch.compile, same call), the runs-trained-together measurement, and the predictor
# comparison at as many steps as the time left allows. Results, all in $OUT (6 files, no folders):
#   env.txt          GPU, driver, clocks; jax / flax / optax / torch versions; the budget and what ran
#   figures.jsonl    byol_jax.bench lines (R18 no_augment / full, R50) and the peer's lines (eager, compile)
#   batched.jsonl    scripts/gpu/batched_runs_bench.py: K runs together vs one after another (decides --batch_runs)
#   predictors.tgz   the predictor study's record (--record: runs without checkpoints, results.md/.json/.png)
#   log.txt          every command's output, in order
#   summary.md       the tables (scripts/gpu/bench_and_study.py summary), also printed last
# Needs, carried with the call (both ignored by git; docs/gpu.md says how to make them):
#   .whl/ml_collections-1.1.0-py3-none-any.whl   (the GPU image has no ml_collections)
#   data/fashion-mnist/                           the four Fashion-MNIST IDX .gz files (30 MB)
# Usage (device tool: carry [".whl", "data"], timeout_s 600):
#   bash scripts/gpu/bench_and_study.sh
#   PARTS="r18 r50" bash scripts/gpu/bench_and_study.sh              a subset of: r18 batched r50 predictors (in order)
#   R50_VARIANTS=no_augment+directpred+newton_schulz,no_augment ...   also R50's MLP predictor (+35 s)
#   PARTS=predictors BUDGET=540 bash scripts/gpu/bench_and_study.sh  a call for the study alone (~4x the steps)
#   BATCH_RUNS=1 PARTS=predictors ...                                  the study's runs each alone (no --batch_runs)
# CPU dry run (checks that every command runs; figures meaningless): see docs/gpu.md, `DRY=1`.
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
BUDGET=${BUDGET:-540}
PARTS=${PARTS:-r18 batched r50 predictors}
DATA=${DATA:-data/fashion-mnist}
PY=${PY:-python3}; TORCH_PY=${TORCH_PY:-$PY}
PRED_ROWS=${PRED_ROWS:-mlp,linear,linear_sym,directpred,directcopy,none}
PRED_SEEDS=${PRED_SEEDS:-3}
PRED_PARALLEL=${PRED_PARALLEL:-0}     # processes for the study; 0: one per group of runs trained together
BATCH_RUNS=${BATCH_RUNS:-16}          # the study's --batch_runs: a row's seeds train together (rows differ in the
                                      # predictor, another program), up to this many per process
PRED_STEPS=${PRED_STEPS:-}            # fixed steps per run instead of the plan from the time left
WORK=${WORK:-/tmp/bench_and_study}            # the study's folder (checkpoints stay there; the record comes back)
if [ -n "${DRY:-}" ]; then  # CPU: tiny shapes and steps, same commands
  BENCH_STEPS="--steps=1 --repeats=1 --warmup=1"
  R18_EXTRA=${R18_EXTRA:---config.model.backbone=resnet_tiny --config.model.width=4 --config.data.image_size=32 --config.train.batch_size=8}
  R50_EXTRA=${R50_EXTRA:---config.model.width=4 --config.data.image_size=32 --config.train.batch_size=4}
  PEER_R18="--res 32 --batch 4 --steps 1"; PEER_R50="--res 32 --batch 2 --steps 1"; PEER_COMPILE=${PEER_COMPILE:-0}
  BATCHED_ARGS=${BATCHED_ARGS:---runs=2 --steps=1 --repeats=1 --feeds=host --set=model.width=4}
  PRED_EXTRA=${PRED_EXTRA:---config.base.model.width=4 --config.base.eval.num_train=256 --config.base.eval.precise_bn_batches=1 --config.base.eval.probe_max_iter=5 --config.base.eval.knn_k=5}
  PRED_STEPS=${PRED_STEPS:-2}; PRED_SEEDS=${PRED_SEEDS_DRY:-2}; PRED_RATE_STEPS="--steps=1 --repeats=1"
  PRED_PARALLEL=${PRED_PARALLEL_DRY:-2}
else
  BENCH_STEPS=""; R18_EXTRA=${R18_EXTRA:-}; R50_EXTRA=${R50_EXTRA:-}; PEER_COMPILE=${PEER_COMPILE:-1}
  PEER_R18="--res 96 --batch 256 --steps 50"; PEER_R50="--res 224 --batch 128 --steps 20"
  BATCHED_ARGS=${BATCHED_ARGS:---runs=3,8,16,32 --steps=30 --repeats=3}
  PRED_EXTRA=${PRED_EXTRA:-}; PRED_RATE_STEPS="--steps=20 --repeats=2"
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
TSCALE=${TSCALE:-1}  # the parts' timeouts times this (a dry run on a slow CPU: DRY sets 20)
[ -n "${DRY:-}" ] && TSCALE=${TSCALE_DRY:-20}
T0=$SECONDS
left() { echo $(( BUDGET - (SECONDS - T0) )); }
# cap N: N x TSCALE seconds, or what is left of the budget (less 20 s kept for the summary), whichever is smaller.
cap() { local n=$(( $1 * TSCALE )) l=$(( $(left) - 20 )); [ "$l" -lt "$n" ] && echo $(( l > 1 ? l : 1 )) || echo "$n"; }
log() { echo "== [$(( SECONDS - T0 )) s] $*" | tee -a "$OUT/log.txt"; }
status() { [ "$1" = 124 ] && log "$2: timed out" || { [ "$1" != 0 ] && log "$2: exit status $1"; }; true; }

# The GPU image has byol_jax's dependencies but not byol_jax (`pip install -e .`): its scripts import it from here.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! $PY -c 'import ml_collections' 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{ date -u; echo "budget ${BUDGET} s, parts: $PARTS"; git rev-parse HEAD 2>/dev/null; git status --short 2>/dev/null | head -20
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv 2>&1
  $PY -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
  $TORCH_PY -c 'import torch; print("torch", torch.__version__)'; } >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# bench: a byol_jax.bench call whose JSON lines go to figures.jsonl. peer: the PyTorch peer, likewise.
# Each line kept is tagged with its part ({"part": "r18", ...}).
bench() { local t=$1; shift; timeout "$(cap "$t")" $PY -m byol_jax.bench "$@" $BENCH_STEPS 2>>"$OUT/log.txt" \
  | tee -a "$OUT/log.txt" | grep '^{"variant"\|^{"measured_peak' | sed "s/^{/{\"part\": \"$part\", /" \
  >>"$OUT/figures.jsonl"; status "${PIPESTATUS[0]}" bench; }
peer() { local t=$1; shift; timeout "$(cap "$t")" $TORCH_PY scripts/peers/torch_byol_step.py "$@" --amp --channels-last \
  2>>"$OUT/log.txt" | tee -a "$OUT/log.txt" | grep '^{"peer"' | sed "s/^{/{\"part\": \"$part\", /" \
  >>"$OUT/figures.jsonl"; status "${PIPESTATUS[0]}" "peer $*"; }

# ResNet-18 at 96 px, batch 256, bf16, the peer's heads (projector 512-4096-256, 256x256 DirectPred predictor).
R18="--config=configs/stl10.py --config.train.batch_size=256 --config.data.image_size=96
  --config.train.compute_dtype=bfloat16 --config.model.projector_hidden=4096 --config.model.projector_dim=256
  --config.model.projector_bn_affine=True --config.predictor.solver=newton_schulz --config.train.num_devices=1"
R50="--config=configs/imagenet.py --config.train.batch_size=128 --config.train.num_devices=1"
for part in $PARTS; do
  [ "$(left)" -lt 40 ] && { log "$part: skipped, $(left) s left"; continue; }
  case $part in
  r18) log "r18: byol_jax (DirectPred Newton-Schulz, without / with augmentation), then the peer"
    bench 150 $R18 --steps=50 --repeats=5 --measure_peak --variants=no_augment,full $R18_EXTRA
    peer 60 --arch resnet18 $PEER_R18
    [ "$PEER_COMPILE" = 1 ] && peer 150 --arch resnet18 $PEER_R18 --compile ;;
  r50) log "r50: byol_jax (the peer's linear predictor, set by DirectPred Newton-Schulz), then the peer"
    bench 120 $R50 --steps=20 --repeats=3 --variants=${R50_VARIANTS:-no_augment+directpred+newton_schulz} $R50_EXTRA
    peer 60 --arch resnet50 $PEER_R50
    [ "$PEER_COMPILE" = 1 ] && peer 150 --arch resnet50 $PEER_R50 --compile ;;
  batched) log "batched: K study runs trained together vs one after another"
    timeout "$(cap 150)" $PY scripts/gpu/batched_runs_bench.py $BATCHED_ARGS --data_path="$DATA" \
      --out="$OUT/batched.jsonl" >>"$OUT/log.txt" 2>&1
    status $? batched; tail -1 "$OUT/batched.jsonl" 2>/dev/null ;;
  predictors) log "predictors: a row's seeds trained together against one run alone, then the study sized to the time left"
    SEEDS=$PRED_SEEDS; ROWS=$(echo "$PRED_ROWS" | tr ',' '\n' | wc -l); RUNS=$(( ROWS * SEEDS ))
    GROUP=$(( BATCH_RUNS < SEEDS ? BATCH_RUNS : SEEDS ))  # runs per group: only a row's seeds share a program
    NGROUPS=$(( ROWS * ( (SEEDS + GROUP - 1) / GROUP ) ))
    WIDTH=64; [ -n "${DRY:-}" ] && WIDTH=4
    NET="--config.model.backbone=resnet18 --config.model.stem=cifar --config.model.width=$WIDTH"
    # The study row directpred on the study network (augmentation on), one run alone and GROUP runs together
    # (byol_jax.batched, as --batch_runs trains them): the GPU time per run-step the plan divides the time by.
    timeout "$(cap 100)" $PY scripts/gpu/batched_runs_bench.py --row=directpred --runs="$GROUP" --feeds=host \
      --set=model.backbone=resnet18 --set=model.stem=cifar --set=model.width=$WIDTH --data_path="$DATA" \
      $PRED_RATE_STEPS 2>>"$OUT/log.txt" | tee -a "$OUT/log.txt" | grep '^{"device"' \
      | sed 's/^{/{"part": "predictors_rate", /' >>"$OUT/figures.jsonl"; status "${PIPESTATUS[0]}" "study network step"
    MS=$($PY scripts/gpu/bench_and_study.py rate "$OUT/figures.jsonl" --group="$GROUP" 2>>"$OUT/log.txt")
    if [ -z "$PRED_STEPS" ]; then
      [ -z "$MS" ] && { log "predictors: no step time measured; skipped"; continue; }
      PLAN=$($PY scripts/gpu/bench_and_study.py plan --seconds=$(( $(left) - 30 )) --ms_per_step="$MS" --runs=$RUNS)
    else
      PLAN="--config.base.train.steps=$PRED_STEPS --config.base.train.checkpoint_every=$PRED_STEPS"
    fi
    log "predictors: $RUNS runs in $NGROUPS groups of up to $GROUP, ${MS:-?} ms per run-step, plan: $PLAN"
    case $PLAN in skip*) continue ;; esac
    P=$PRED_PARALLEL; [ "$P" = 0 ] && P=$NGROUPS
    # Several processes share the GPU: each takes memory as it needs it, not 75% of the card up front.
    XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -k 30 "$(cap 100000)" $PY -m byol_jax.study \
      --config=configs/study/predictors.py --workdir="$WORK/study" --record="$WORK/record" \
      --rows="$PRED_ROWS" --parallel="$P" --batch_runs="$BATCH_RUNS" --config.seeds="$SEEDS" \
      --config.base.data.path="$PWD/$DATA" \
      $(echo "$NET" | sed 's/--config\./--config.base./g') $PLAN $PRED_EXTRA >>"$OUT/log.txt" 2>&1
    status $? study; log "predictors: study ended"
    cp "$WORK/record/results.md" "$OUT/predictors_results.md" 2>/dev/null
    tar -czf "$OUT/predictors.tgz" -C "$WORK" record $(cd "$WORK" && ls -d study/.groups 2>/dev/null) 2>/dev/null ;;
  *) log "unknown part $part" ;;
  esac
done
$PY scripts/gpu/bench_and_study.py summary "$OUT" | tee -a "$OUT/log.txt"
rm -f "$OUT/predictors_results.md"  # inside summary.md and predictors.tgz: the call returns at most 8 files
log "done in $(( SECONDS - T0 )) s"
