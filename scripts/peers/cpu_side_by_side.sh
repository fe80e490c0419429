#!/usr/bin/env bash
# byol_jax's benchmark and the PyTorch peers, one after the other in one sitting on this machine (CPU):
#   (a) ResNet-18 at 64 px, batch 32: byol_jax.bench (stl10 config with the peer's projector 512-4096-256, BN
#       affine, linear predictor, no augmentation) vs the ResNet-18 PyTorch peer $PEER_R18 [--channels-last];
#       the jax side compiles and runs for minutes. The project does not ship that peer: put a PyTorch BYOL step
#       there that takes --res --batch --steps [--channels-last] and prints one JSON line with img_per_s
#       (docs/records/cpu/side_by_side_2026-11-30*/a_torch*.jsonl show the lines); without it run PARTS=b;
#   (b) the default config (configs/fashion_mnist.py): byol_jax.bench no_augment and full vs
#       scripts/peers/torch_fmnist_step.py [--channels-last], after checking that the peer has byol_jax's parameter
#       count and computes the same two steps (scripts/peers/fmnist_jax_reference.py, torch_fmnist_step.py --check).
#
#   bash scripts/peers/cpu_side_by_side.sh OUT_DIR
#   TORCH_PY=.peer/venv/bin/python JAX_PY=.venv/bin/python PARTS="a b" QUICK=1 bash scripts/peers/cpu_side_by_side.sh OUT
#   ROUNDS=3 PARTS=b bash scripts/peers/cpu_side_by_side.sh OUT   # jax, torch, torch channels-last, 3 times over
#
# TORCH_PY (default .peer/venv/bin/python) and JAX_PY (default python) are the two interpreters; torch is not
# in requirements.txt. Make the torch interpreter once (.peer/ is git-ignored; CPU wheels):
#   python3 -m venv .peer/venv && .peer/venv/bin/pip install numpy torch --index-url https://download.pytorch.org/whl/cpu
# PEER_R18 is the ResNet-18 peer (default scripts/peers/torch_byol_step.py; part a only). Relative paths are read from the
# repository root. PARTS picks the parts (default "a b"). ROUNDS=N (default 1) runs each part's timed runs N times, alternating the
# sides, and the table reports the median and range of the per-round ratio: machines like this one drift by
# +-15% within minutes, so a ratio measured once can mislead. QUICK=1 runs 1-2 steps of everything (to test the script; numbers meaningless).
# Writes one .jsonl (stdout) and one .log (stderr) per run into OUT_DIR, machine.json, and prints a markdown
# table of images/s (an image is one sample, two views) with the ratio jax/torch for like-for-like rows (no
# augmentation on either side). Nothing else should run on the machine meanwhile: both sides use every core
# (and do not run it under `nice` beside other work: torch's OpenMP threads then stall, steps take 10x longer or more).
# Time: (b) a few minutes; (a) several more (the jax side compiles ResNet-18 and runs 17 steps of seconds each).
set -euo pipefail
OUT=${1:?usage: cpu_side_by_side.sh OUT_DIR}
TORCH_PY=${TORCH_PY:-.peer/venv/bin/python}
JAX_PY=${JAX_PY:-python}
PEER_R18=${PEER_R18:-scripts/peers/torch_byol_step.py}
PARTS=${PARTS:-a b}
QUICK=${QUICK:-0}
ROUNDS=${ROUNDS:-1}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if ! "$TORCH_PY" -c 'import torch, numpy' 2>/dev/null; then
  echo "error: TORCH_PY=$TORCH_PY cannot import torch and numpy; make it with" >&2
  echo "  python3 -m venv .peer/venv && .peer/venv/bin/pip install numpy torch --index-url https://download.pytorch.org/whl/cpu" >&2
  exit 2
fi
if [[ " $PARTS " == *" a "* ]] && [ ! -f "$PEER_R18" ]; then
  echo "error: part a needs the ResNet-18 PyTorch peer at PEER_R18=$PEER_R18 (not shipped with byol_jax);" \
    "set PEER_R18, or run PARTS=b (the default config against scripts/peers/torch_fmnist_step.py)" >&2
  exit 2
fi

if [ "$QUICK" = 1 ]; then
  A_JAX="--steps=1 --repeats=1 --warmup=1"; A_TORCH="--steps 1"
  B_JAX="--steps=1 --repeats=1 --warmup=1"; B_TORCH="--steps 1 --repeats 1 --warmup 1"
else
  A_JAX="--steps=5 --repeats=3 --warmup=2"; A_TORCH="--steps 10"
  B_JAX="--steps=20 --repeats=3"; B_TORCH="--steps 20 --repeats 3 --warmup 3"
fi

run() {  # run NAME CMD...: stdout -> NAME.jsonl (JSON lines only), stderr -> NAME.log
  local name=$1; shift
  echo "== $name: $*" >&2
  "$@" 2>"$OUT/$name.log" | grep '^{' | tee "$OUT/$name.jsonl" >&2
}

"$JAX_PY" - "$OUT/machine.json" "$TORCH_PY" <<'EOF'
import json, platform, subprocess, sys, datetime, os
cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), platform.processor())
import jax
torch_v = subprocess.run([sys.argv[2], '-c', 'import torch; print(torch.__version__)'], capture_output=True,
                         text=True).stdout.strip()
info = {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'), 'cpu': cpu,
        'cpus': os.cpu_count(), 'jax': jax.__version__, 'torch': torch_v, 'loadavg_at_start': os.getloadavg()}
json.dump(info, open(sys.argv[1], 'w'))
print(json.dumps(info), file=sys.stderr)
EOF

if [[ " $PARTS " == *" b "* ]]; then
  run b_param_check "$JAX_PY" scripts/peers/fmnist_jax_reference.py --expect 1557354 --steps_npz "$OUT/b_reference.npz"
  run b_torch_check "$TORCH_PY" scripts/peers/torch_fmnist_step.py --check "$OUT/b_reference.npz"
  for r in $(seq 1 "$ROUNDS"); do
    sfx=$([ "$ROUNDS" = 1 ] || echo "_r$r")
    run b_jax$sfx "$JAX_PY" -m byol_jax.bench --variants=no_augment,full $B_JAX
    run b_torch$sfx "$TORCH_PY" scripts/peers/torch_fmnist_step.py $B_TORCH
    run b_torch_channels_last$sfx "$TORCH_PY" scripts/peers/torch_fmnist_step.py $B_TORCH --channels-last
  done
fi
if [[ " $PARTS " == *" a "* ]]; then
  for r in $(seq 1 "$ROUNDS"); do
    sfx=$([ "$ROUNDS" = 1 ] || echo "_r$r")
    run a_jax$sfx "$JAX_PY" -m byol_jax.bench --config=configs/stl10.py --config.train.batch_size=32 \
      --config.data.image_size=64 --config.model.projector_hidden=4096 --config.model.projector_dim=256 \
      --config.model.projector_bn_affine=True --variants=no_augment+linear $A_JAX
    run a_torch$sfx "$TORCH_PY" "$PEER_R18" --res 64 --batch 32 $A_TORCH
    run a_torch_channels_last$sfx "$TORCH_PY" "$PEER_R18" --res 64 --batch 32 $A_TORCH --channels-last
  done
fi

"$JAX_PY" - "$OUT" "$ROUNDS" <<'EOF'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])

def rows(name):
  path = os.path.join(out, name + '.jsonl')
  if not os.path.exists(path):
    return []
  rs = [json.loads(l) for l in open(path) if l.strip()]
  seen, keep = set(), []
  for r in rs:  # bench repeats its first variant on the last line
    ips = r.get('images_per_sec', r.get('img_per_s'))
    key = r.get('variant', name)
    if ips is not None and key not in seen:
      seen.add(key)
      keep.append((key, ips, r.get('ms_per_step')))
  return keep

m = json.load(open(os.path.join(out, 'machine.json')))
print(f"\n{m['cpu']}, {m['cpus']} CPUs, {m['date']}, jax {m['jax']}, torch {m['torch']}, "
      f"load average at start {m['loadavg_at_start'][0]:.2f}\n")
print('| case | jax variant | jax img/s | torch | torch img/s | jax/torch |')
print('|---|---|---|---|---|---|')
cases = [('ResNet-18 64 px b32', 'a_jax', 'no_augment+linear', ['a_torch', 'a_torch_channels_last']),
         ('default config b128', 'b_jax', 'no_augment', ['b_torch', 'b_torch_channels_last'])]
for case, jname, like, tnames in cases:
  jax_rows = rows(jname)
  if not jax_rows and not any(rows(t) for t in tnames):
    continue
  j = {k: (ips, ms) for k, ips, ms in jax_rows}
  for t in tnames:
    for _, ips, ms in rows(t):
      jips = j.get(like, (None, None))[0]
      ratio = f'{jips / ips:.2f}' if jips and ips else '-'
      setting = 'eager fp32, channels-last' if t.endswith('channels_last') else 'eager fp32'
      print(f'| {case} | {like} | {jips} | {setting} | {ips} | {ratio} |')
  for k, (ips, ms) in j.items():
    if k != like:
      print(f'| {case} | {k} (with augmentation) | {ips} | - | - | - |')
if rounds > 1:
  print(f'\n{rounds} rounds, each: jax, torch eager, torch channels-last; per-round ratio jax / best torch of '
        'the round (median [min, max])\n')
  print('| case | jax img/s | torch eager | torch channels-last | jax / best torch |')
  print('|---|---|---|---|---|')
  span = lambda v: f'{statistics.median(v):.1f} [{min(v):.1f}, {max(v):.1f}]' if v else '-'
  for case, jname, like, tnames in cases:
    js, ts, cl, ratios = [], [], [], []
    for r in range(1, rounds + 1):
      j = dict((k, ips) for k, ips, _ in rows(f'{jname}_r{r}')).get(like)
      t = [ips for _, ips, _ in rows(f'{tnames[0]}_r{r}')]
      c = [ips for _, ips, _ in rows(f'{tnames[1]}_r{r}')]
      if j is None or not (t or c):
        continue
      js.append(j); ts += t; cl += c
      ratios.append(j / max(t + c))
    if ratios:
      print(f'| {case} | {span(js)} | {span(ts)} | {span(cl)} | {statistics.median(ratios):.2f} '
            f'[{min(ratios):.2f}, {max(ratios):.2f}] |')
for name in ('b_param_check', 'b_torch_check'):
  for r in (json.loads(l) for l in open(os.path.join(out, name + '.jsonl'))) if os.path.exists(
      os.path.join(out, name + '.jsonl')) else []:
    if 'match' in r:
      print(f"\nparameters: byol_jax {r['params']}, expected {r['expect']}: {'match' if r['match'] else 'MISMATCH'}")
    if 'same_function' in r:
      print(f"peer vs byol_jax over 2 steps: max loss diff {r['max_loss_diff']:.1e}, max parameter diff "
            f"{r['max_param_diff_after_2_steps']:.1e}: {'same function' if r['same_function'] else 'DIFFERENT'}")
EOF
