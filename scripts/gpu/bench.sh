#!/usr/bin/env bash
# The GPU benchmark in one call on one GPU: byol_jax's step beside the PyTorch peer
# (r18 also times the augmentation alone and without each of its ops: `bench --augment_ops`).
# The torch parts run the project's peer, scripts/peers/torch_byol_step.py. Where ml_collections is missing, its wheel
# in .whl/ (docs/gpu.md). Writes JSON lines under ${OUT:-bench_out}/. Everything in one budgeted call: bench_and_study.sh.
#   bash scripts/gpu/bench.sh
#   PARTS="r18 torch_compile" VARIANTS=no_augment,full bash scripts/gpu/bench.sh     (a subset)
#   PARTS=profile VARIANTS=no_augment+linear,full bash scripts/gpu/bench.sh   (traces + scripts/gpu/trace_summary.py)
# EXTRA="--config.model.backbone=resnet_tiny ..." is appended to the byol_jax commands (a CPU dry run).
set -u
OUT=${OUT:-bench_out}; mkdir -p "$OUT"
PARTS=${PARTS:-r18 torch_compile torch_eager r50}
VARIANTS=${VARIANTS:-no_augment,no_augment+linear,full,no_augment+pool_xla,no_augment+eigh}
R50_VARIANTS=${R50_VARIANTS:-no_augment,no_augment+directpred+newton_schulz}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! python3 -c 'import ml_collections' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import jax, flax, optax, torch; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, "torch", torch.__version__, jax.devices())' | tee -a "$OUT/gpu.txt"

# ResNet-18 at 96 px, batch 256, bf16, the peer's heads (projector 512-4096-256, 256x256 predictor).
R18="--config=configs/stl10.py --config.train.batch_size=256 --config.data.image_size=96
  --config.train.compute_dtype=bfloat16 --config.model.projector_hidden=4096 --config.model.projector_dim=256
  --config.model.projector_bn_affine=True --config.predictor.solver=newton_schulz"
for part in $PARTS; do
  case $part in
  r18) echo "== byol_jax ResNet-18"
    timeout 400 python3 -m byol_jax.bench $R18 --steps=50 --repeats=5 --measure_peak --variants=$VARIANTS \
      --augment_ops ${EXTRA:-} 2>"$OUT/jax_r18.err" | tee "$OUT/jax_r18.jsonl"
    tail -3 "$OUT/jax_r18.err" ;;
  torch_compile) echo "== torch peer, torch.compile"
    timeout 150 python3 scripts/peers/torch_byol_step.py --res 96 --batch 256 --amp --channels-last --compile --steps 100 \
      2>>"$OUT/torch.err" | tee -a "$OUT/torch.jsonl"
    tail -3 "$OUT/torch.err" ;;
  torch_eager) echo "== torch peer, eager"
    timeout 50 python3 scripts/peers/torch_byol_step.py --res 96 --batch 256 --amp --channels-last --steps 50 \
      2>>"$OUT/torch.err" | tee -a "$OUT/torch.jsonl" ;;
  profile) echo "== byol_jax ResNet-18, profiler traces of 5 steps per variant"
    timeout 300 python3 -m byol_jax.bench $R18 --steps=20 --repeats=1 --variants=$VARIANTS --profile_dir=/tmp/byol_prof \
      ${EXTRA:-} 2>"$OUT/profile.err" | tee "$OUT/profile.jsonl"
    for v in ${VARIANTS//,/ }; do
      f=$(find "/tmp/byol_prof/$v" -name 'perfetto_trace.json.gz' | head -1)
      [ -n "$f" ] && cp "$f" "$OUT/trace_${v//+/_}.json.gz" && python3 scripts/gpu/trace_summary.py "$f" --top=10
    done ;;
  r50) echo "== byol_jax ResNet-50, 224 px, batch 128 (ImageNet config, for docs/scaling.md)"
    timeout 150 python3 -m byol_jax.bench --config=configs/imagenet.py --config.train.batch_size=128 \
      --config.train.num_devices=1 --steps=20 --repeats=3 --variants=$R50_VARIANTS \
      ${EXTRA:-} 2>"$OUT/jax_r50.err" | tee "$OUT/jax_r50.jsonl"
    tail -3 "$OUT/jax_r50.err" ;;
  esac
done
echo "== done"
