"""Where the CPU training step's time goes: per XLA operation, grouped, from a profile and XLA's CPU program.

  XLA_FLAGS="--xla_dump_to=/tmp/hlo --xla_dump_hlo_as_text" python -m byol_jax.bench --variants=no_augment \
      --steps=5 --repeats=2 --warmup=1 --profile_dir=/tmp/prof [--config...]
  python scripts/cpu/profile_step.py /tmp/prof /tmp/hlo [--steps=5] [--top=15]

Reads the Perfetto trace that `bench --profile_dir` records (5 steps per variant) and the optimised HLO of
the step (`*jit_train_step.cpu_after_optimizations.txt`), and sums the time of each operation (thunk)
into: convolution forward, convolution input gradient, convolution weight gradient, matrix products,
layout copies (transposes), and the rest (BatchNorm, ReLU, losses, optimizer, EMA: elementwise and
reductions). A convolution's kind is read from the op name XLA keeps in its metadata (`jvp()` forward,
`transpose(jvp())` backward) and its output (a kernel-shaped output is a weight gradient). Then the
most expensive operations with their shapes. With several CPU devices the time is summed over devices.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re


def op_times(trace_dir):
  path = sorted(glob.glob(os.path.join(trace_dir, '**', 'perfetto_trace.json.gz'), recursive=True))[-1]
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  times = collections.Counter()
  for e in events:
    if e.get('ph') == 'X':
      times[e['name']] += e['dur']
  return times


def hlo_ops(hlo_dir):
  """name -> (output shape, opcode, op name, opcode of the fused computation's root) of each operation."""
  path = sorted(glob.glob(os.path.join(hlo_dir, '*jit_train_step.cpu_after_optimizations.txt')))[-1]
  text = open(path).read()
  roots = {m.group(1): m.group(2) for m in re.finditer(
      r'^%(\S+) [^\n]*\{\n(?:[^\n]*\n)*?\s*ROOT %\S+ = \S+ ([a-z\-]+)\(', text, re.M)}
  ops = {}
  for m in re.finditer(r'^\s*(?:ROOT )?%(\S+) = (\S+) ([a-z\-]+)\((.*)$', text, re.M):
    name, shape, opcode, rest = m.groups()
    op_name = re.search(r'op_name="([^"]*)"', rest)
    called = re.search(r'calls=%([^,\s]+)', rest)
    ops[name] = (shape, opcode, op_name.group(1) if op_name else '', roots.get(called.group(1)) if called else None)
  return ops


def category(name, shape, opcode, op_name, root, batch):
  if 'convolution' in (opcode, root) or opcode == 'custom-call' or name.startswith('ffi_call'):
    # (custom calls: models/native's compiled convolutions and weight gradients)
    # Kernel-shaped ([C_in, kh, kw, C_out]), or XLA dropped the op name (weight gradients of models/native/conv.py).
    if shape.split('[')[1].split(',')[0] != batch or not op_name:
      return 'convolution weight gradient'
    return 'convolution input gradient' if 'transpose(' in op_name else 'convolution forward'
  if 'dot' in (opcode, root):
    return 'matrix products (heads; products of models/native/conv.py)'
  if 'transpose' in name or 'copy' in name:
    return 'layout copies (transposes)'
  return 'elementwise and reductions (BatchNorm, ReLU, loss, optimizer, EMA)'


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('trace_dir')
  ap.add_argument('hlo_dir')
  ap.add_argument('--steps', type=int, default=5, help='steps the trace holds (bench records 5)')
  ap.add_argument('--top', type=int, default=15)
  a = ap.parse_args()
  times, ops = op_times(a.trace_dir), hlo_ops(a.hlo_dir)
  # The batch: the leading dimension of the forward convolutions (XLA's, or models/native's custom calls).
  conv_batches = collections.Counter(
      shape.split('[')[1].split(',')[0] for shape, opcode, op, root in ops.values()
      if ('convolution' in (opcode, root) and op.endswith('jvp()/conv_general_dilated'))
      or (opcode == 'custom-call' and 'jvp()' in op and 'transpose(' not in op))
  batch = conv_batches.most_common(1)[0][0] if conv_batches else '?'
  by_category = collections.Counter()
  for name, us in times.items():
    if name in ops:
      by_category[category(name, *ops[name], batch)] += us
  total = sum(by_category.values())
  print(f'operation time: {total / a.steps / 1e3:.1f} ms per step (summed over devices)')
  print('| part | ms per step | share |\n|---|---|---|')
  for name, us in by_category.most_common():
    print(f'| {name} | {us / a.steps / 1e3:.1f} | {100 * us / total:.1f}% |')
  print(f'\ntop {a.top} operations:')
  print('| operation | output | ms per step | kind |\n|---|---|---|---|')
  ranked = sorted(((n, us) for n, us in times.items() if n in ops), key=lambda x: -x[1])[:a.top]
  for name, us in ranked:
    print(f'| {name} | {ops[name][0].split("{")[0]} | {us / a.steps / 1e3:.1f} | {category(name, *ops[name], batch)} |')


if __name__ == '__main__':
  main()
