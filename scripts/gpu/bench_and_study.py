"""Helpers of scripts/gpu/bench_and_study.sh: how long the predictor study can train, and the summary of the call.

  python scripts/gpu/bench_and_study.py rate FIGURES.jsonl --group=G
      -> the GPU time of one run-step in ms: the study network's G runs trained together (--batch_runs; their
         step / G), as scripts/gpu/batched_runs_bench.py measured it in this call, else one run alone
  python scripts/gpu/bench_and_study.py plan --seconds=S --ms_per_step=M --runs=18 [--overhead=150] [--safety=0.75]
      -> one line of study flags: --config.base.train.steps=N (and, past the paper's weight-decay exposure, the
         lr, weight decay and EMA rate that keep it), or 'skip: ...'
  python scripts/gpu/bench_and_study.py summary OUT_DIR   -> OUT_DIR/summary.md (also printed)

The study trains with --batch_runs: a row's seeds together, one process per group (rows differ in the predictor,
another program). `plan` divides the GPU time by the runs' summed cost, runs x steps x ms per run-step, so it
takes the groups' per-run cost (`rate`), not one run's: on an H100 a group of 3 runs of the tiny study network
costs 1.6 runs' time (per-run speed-up 1.91x; 16 runs: 3.93x; 2026-12-06). The ResNet-18 this part trains fills
more of the GPU, so its gain is likely smaller: the call measures it.

The paper's regime (configs/study/_base.py) matches the paper's STL-10 run in eta = wd / lr and beta = (1 - tau) / lr;
its weight-decay exposure wd lr steps / (1 - m) grows with the steps and reaches the paper's 9.8 at ~7,370 steps
(lr 0.1). Past that, `plan` keeps eta, beta and the exposure at the paper's values by lowering the lr:
lr = sqrt(9.8 (1 - m) / (eta steps)), wd = eta lr, tau = 1 - beta lr (at the paper's 82k steps: lr 0.03, its own).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys

PAPER_EXPOSURE = 9.8  # wd lr steps / (1 - m) of the paper's STL-10 run (configs/study/_base.py)
EPOCH_STEPS = 60000 // 128  # Fashion-MNIST, batch 128
MAX_STEPS = 100 * EPOCH_STEPS  # the paper's 100 epochs
PEAK_TFLOPS = 989.0  # H100 / H200 dense bf16, datasheet


def paper_regime(steps: int, lr: float, wd: float, tau: float, momentum: float) -> dict:
  """{lr, wd, tau} with the base's eta and beta and an exposure of at most the paper's (lowering lr past it)."""
  eta, beta = wd / lr, (1.0 - tau) / lr
  lr_new = min(lr, math.sqrt(PAPER_EXPOSURE * (1.0 - momentum) / (eta * steps)))
  return {'lr': lr_new, 'wd': eta * lr_new, 'tau': 1.0 - beta * lr_new}


def plan_steps(seconds: float, ms_per_step: float, runs: int, overhead: float, safety: float,
               min_steps: int) -> int | None:
  """Steps per run that fit: (seconds - overhead) x safety of GPU time for `runs` runs of `ms_per_step` ms per
  run-step each (a group's step / its runs when they train together), in steps of 50."""
  steps = int((seconds - overhead) * safety * 1e3 / ms_per_step / runs) // 50 * 50
  steps = min(steps, MAX_STEPS)
  return steps if steps >= min_steps else None


def plan(args) -> str:
  steps = plan_steps(args.seconds, args.ms_per_step, args.runs, args.overhead, args.safety, args.min_steps)
  if steps is None:
    return (f'skip: {args.seconds:.0f} s left, {args.ms_per_step:.1f} ms per step x {args.runs} runs: fewer than '
            f'{args.min_steps} steps per run')
  flags = [f'--config.base.train.steps={steps}', f'--config.base.train.checkpoint_every={steps}']
  r = paper_regime(steps, args.lr, args.wd, args.tau, args.momentum)
  if r['lr'] < args.lr:
    flags += [f'--config.base.optim.lr={r["lr"]:.5g}', f'--config.base.optim.weight_decay={r["wd"]:.5g}',
              f'--config.base.ema.tau_base={r["tau"]:.6g}']
  return ' '.join(flags)


def run_step_ms(rows: list[dict], group: int) -> float | None:
  """ms of GPU time per run-step from scripts/gpu/batched_runs_bench.py's lines (part predictors_rate): `group` runs
  together, per run, when measured; else one run alone; None when neither ran."""
  rate = [r for r in rows if r.get('part') == 'predictors_rate' and 'ms_per_step' in r and r.get('feed') == 'host']
  together = next((r for r in rate if r.get('mode') == 'together' and r.get('runs') == group), None)
  if together is not None and group > 1:
    return together['ms_per_run_step']
  alone = next((r for r in rate if r.get('mode') == 'alone'), None)
  return alone['ms_per_step'] if alone else None


def _lines(path: str) -> list[dict]:
  """The JSON objects of the files at `path`, each once (byol_jax.bench prints its first variant again last)."""
  out, seen = [], set()
  for p in sorted(glob.glob(path)):
    for line in open(p):
      line = line.strip()
      if line.startswith('{') and line not in seen:
        seen.add(line)
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError:
          pass
  return out


def figures_table(rows: list[dict]) -> list[str]:
  """byol_jax and the peer side by side per part (r18, r50): images/s, vs torch.compile, MFU by XLA's count and by
  the peer's model FLOPs (every tap; the same network, so comparable across rows)."""
  out = []
  titles = {'r18': 'ResNet-18, 96 px, batch 256, bf16', 'r50': 'ResNet-50, 224 px, batch 128, bf16'}
  for part, title in titles.items():
    jax_rows = [r for r in rows if r.get('part') == part and 'variant' in r and 'ms_per_step' in r]
    peers = [r for r in rows if r.get('part') == part and r.get('peer') == 'torch']
    if not jax_rows and not peers:
      continue
    compiled = next((p for p in peers if p.get('compile')), None)
    model_gflop = next((p['gflop_per_image'] for p in peers if p.get('gflop_per_image')), None)
    out += [f'**{title}** ({(jax_rows or peers)[0].get("device")}; model FLOPs {model_gflop} GFLOP per image)', '',
            '| step | ms/step | images/s | vs torch.compile | MFU (XLA count) | MFU (model FLOPs) |',
            '|---|---|---|---|---|---|']
    for r in jax_rows:
      ips = r['images_per_sec']
      vs = f'{ips / compiled["img_per_s"]:.2f}x' if compiled else ''
      model = f'{model_gflop * ips / 1e3 / PEAK_TFLOPS:.3f}' if model_gflop else ''
      out.append(f'| byol_jax `{r["variant"]}` ({r.get("predictor")}, {r.get("solver")}) | {r["ms_per_step"]:.2f} | '
                 f'{ips:,.0f} | {vs} | {r.get("mfu")} | {model} |')
    for p in peers:
      vs = f'{p["img_per_s"] / compiled["img_per_s"]:.2f}x' if compiled else ''
      out.append(f'| PyTorch peer, {"torch.compile" if p.get("compile") else "eager"}, bf16 autocast, channels-last | '
                 f'{p["ms_per_step"]:.2f} | {p["img_per_s"]:,.0f} | {vs} | | {p.get("mfu")} |')
    out.append('')
  rate = [r for r in rows if r.get('part') == 'predictors_rate' and 'ms_per_step' in r]
  alone = next((r for r in rate if r.get('mode') == 'alone'), None)
  together = next((r for r in rate if r.get('mode') == 'together' and r.get('runs', 1) > 1), None)
  if alone:
    text = (f'The predictor study\'s network ({alone["backbone"]} width {alone["width"]}, batch {alone["batch_size"]}, '
            f'{alone["compute_dtype"]}, DirectPred {alone["solver"]}, augmentation on): one run alone '
            f'{alone["ms_per_step"]:.2f} ms per step')
    if together:
      text += (f'; {together["runs"]} runs together (--batch_runs) {together["ms_per_step"]:.2f} ms per step, '
               f'{together["ms_per_run_step"]:.2f} ms per run-step (per-run speed-up {together["per_run_speedup"]})')
    out += [text + '.', '']
  peak = next((r for r in rows if 'measured_peak_tflops' in r), None)
  if peak:
    out += [f'Measured bf16 matrix-product peak: {peak["measured_peak_tflops"]} TFLOP/s. MFU against {PEAK_TFLOPS:.0f} '
            f'TFLOP/s (dense bf16 datasheet); model FLOPs: the peer\'s torch.utils.flop_counter count.', '']
  return out


def batched_table(rows: list[dict]) -> list[str]:
  if not rows:
    return []
  out = [f'**Runs trained together** (scripts/gpu/batched_runs_bench.py, {rows[0].get("device")}, study network '
         f'{rows[0].get("backbone")} width {rows[0].get("width")}, batch {rows[0].get("batch_size")}, '
         f'{rows[0].get("predictor")})', '', '| feed | runs | ms/step | ms per run-step | per-run speed-up | compile s |',
         '|---|---|---|---|---|---|']
  for r in rows:
    if 'mode' in r and 'ms_per_step' in r:
      out.append(f'| {r["feed"]} | {r["runs"]}{" (alone)" if r["mode"] == "alone" else ""} | {r["ms_per_step"]:.2f} | '
                 f'{r.get("ms_per_run_step", r["ms_per_step"]):.2f} | {r.get("per_run_speedup", 1.0)} | '
                 f'{r.get("compile_s")} |')
    elif 'error' in r:
      out.append(f'| {r.get("feed")} | {r.get("runs")} | error: {r["error"][:80]} | | | |')
  verdict = next((r for r in rows if 'summary' in r), None)
  if verdict:
    out += ['', f'Best per-run speed-up (host feed): {verdict["best_per_run_speedup"]}; adopt in the study runner '
                f'(>= 1.5x on a GPU): {verdict["adopt_in_study_runner"]}.']
  return out + ['']


def summary(out_dir: str) -> str:
  parts = ['# GPU call: benchmarks and the predictor study', '']
  env = os.path.join(out_dir, 'env.txt')
  if os.path.exists(env):
    parts += ['```', open(env).read().strip(), '```', '']
  parts += figures_table(_lines(os.path.join(out_dir, 'figures.jsonl')))
  parts += batched_table(_lines(os.path.join(out_dir, 'batched.jsonl')))
  results = os.path.join(out_dir, 'predictors_results.md')
  if os.path.exists(results):
    parts += ['**Predictor study**', '', open(results).read().strip(), '']
  text = '\n'.join(parts) + '\n'
  with open(os.path.join(out_dir, 'summary.md'), 'w') as f:
    f.write(text)
  return text


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest='what', required=True)
  p = sub.add_parser('plan')
  p.add_argument('--seconds', type=float, required=True, help='time left for the study')
  p.add_argument('--ms_per_step', type=float, required=True,
                 help='GPU ms per run-step: one run alone, or a group of runs trained together per run (`rate`)')
  p.add_argument('--runs', type=int, required=True)
  p.add_argument('--overhead', type=float, default=150.0, help='start, compilation, evaluations, results (s)')
  p.add_argument('--safety', type=float, default=0.75)
  p.add_argument('--min_steps', type=int, default=300)
  p.add_argument('--lr', type=float, default=0.1)  # the paper-regime base (configs/study/_base.py)
  p.add_argument('--wd', type=float, default=1.33e-3)
  p.add_argument('--tau', type=float, default=0.987)
  p.add_argument('--momentum', type=float, default=0.9)
  r = sub.add_parser('rate')
  r.add_argument('figures')
  r.add_argument('--group', type=int, required=True, help='runs trained together per group')
  s = sub.add_parser('summary')
  s.add_argument('out_dir')
  args = ap.parse_args()
  if args.what == 'rate':
    ms = run_step_ms(_lines(args.figures), args.group)
    print('' if ms is None else f'{ms:.4f}')
    return
  print(plan(args) if args.what == 'plan' else summary(args.out_dir))


if __name__ == '__main__':
  sys.exit(main())
