"""Run outputs as they are written: metrics.jsonl (one JSON object per record), TensorBoard events, the progress
bar. Reading them back: byol_jax/rundir.py."""
from __future__ import annotations

import json
import math
import os

import numpy as np

from byol_jax import rundir
from byol_jax.rundir import read_metrics  # noqa: F401  (read here by notebooks and tests)


def _jsonable(v):
  if np.ndim(v) > 0:
    return [_jsonable(x) for x in np.asarray(v).ravel()]
  v = float(v)
  return v if math.isfinite(v) else str(v)  # keeps the file valid JSON when a value is NaN


class MetricsLog:
  """Appends records to workdir/metrics.jsonl and scalars to TensorBoard.

  On resume from step k, records of steps > k (written after the checkpoint the run resumes from)
  are dropped, so the file reads like an uninterrupted run.
  """

  def __init__(self, workdir: str, resume_step: int, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, rundir.METRICS)
    self.writer = None
    if not enabled:
      return
    kept = [r for r in read_metrics(self.path) if r['step'] <= resume_step] if resume_step else []
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in kept)
    os.replace(tmp, self.path)
    try:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(os.path.join(workdir, rundir.TENSORBOARD), purge_step=resume_step or None)
    except ImportError:  # TensorBoard output is optional
      self.writer = None

  def write(self, step: int, record: dict) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{k: _jsonable(v) for k, v in record.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self.writer is not None:
      for k, v in record.items():
        if k != 'step' and isinstance(v, float):
          self.writer.add_scalar(k, v, step)
      self.writer.flush()

  def close(self):
    if self.writer is not None:
      self.writer.close()


def progress_bar(total: int, initial: int, enabled: bool):
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, disable=not enabled, unit='step', dynamic_ncols=True,
              desc='train', smoothing=0.1, mininterval=1.0)
