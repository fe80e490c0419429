"""What the study tests share: the tiny study config (configs/study/tiny.py) with overrides, and run directories
written in milliseconds (a launcher that trains nothing), to test the study's bookkeeping without training."""
import os

from byol_jax import config as config_lib, rundir
from byol_jax.config import load_config_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_study(**overrides):
  c = load_config_module(os.path.join(ROOT, 'configs', 'study', 'x.py'), 'tiny.py').get_config()
  with c.unlocked():
    for key, value in overrides.items():
      config_lib.override(c, {key: value})
  return c


def fake_probe(row: str, seed: int) -> float:
  """A made-up linear probe, different for every (row, seed)."""
  return round(0.5 + 0.1 * (sum(map(ord, row)) % 7) / 7 + 0.01 * seed, 6)


def write_fake_run(path: str, config, row: str, seed: int, outcome: str = 'done', steps_done=None) -> None:
  """A run directory as byol_jax.train leaves it, without training: 'done' (metrics and a summary), 'diverged'
  (diverged.json), 'partial' (metrics up to steps_done, as after a SIGTERM)."""
  rundir.write_config(path, config)
  steps = config.train.steps
  last = steps if outcome == 'done' else (steps // 2 if steps_done is None else steps_done)
  with open(os.path.join(path, rundir.METRICS), 'w') as f:
    f.writelines(f'{{"step": {k}, "loss": {1.0 / (k + 1)}}}\n' for k in range(1, last + 1))
  if outcome == 'diverged':
    rundir.write_diverged(path, f'non-finite loss at step {last} (fake)')
  elif outcome == 'done':
    probe = fake_probe(row, seed)
    rundir.write_summary(path, {
        'steps': steps, 'seconds': 0.01, 'initial_linear_probe_top1': 0.1, 'final_linear_probe_top1': probe,
        'initial_knn_top1': 0.1, 'final_knn_top1': probe - 0.05, 'final_loss': 0.5,
        'final_z_std_times_sqrt_d': 0.02 if row == 'none' else 0.7, 'final_z_effective_rank': 1.2 if row == 'none'
        else 9.0, 'final_feature_effective_rank': 5.0, 'final_z_std': 0.1, 'workdir': os.path.abspath(path)})


class FakeLauncher:
  """A launcher (byol_jax/study/launch.py's interface) that trains nothing: start(run) writes the run's outcome
  into its run directory in milliseconds. outcomes: run key ('row:seed') -> 'done' (default), 'diverged',
  'crash' (nothing written, exit status 1) or 'sigterm' (stopped half way, exit status 0), or a list of them, one
  per start of that run. on_start(run, launcher) runs first (to look at the folders, or send a signal)."""
  detached = False

  def __init__(self, outcomes=None, slots=1, on_start=None, retries=0):
    self.outcomes, self.slots, self.on_start, self.retries = dict(outcomes or {}), slots, on_start, retries
    self.started, self.ended, self.retried, self.signals = [], [], [], []

  def start(self, run) -> None:
    if self.on_start:
      self.on_start(run, self)
    outcome = self.outcomes.get(run.key, 'done')
    if isinstance(outcome, list):
      outcome = outcome[[r.key for r in self.started].count(run.key)]
    self.started.append(run)
    if outcome == 'crash':
      self.ended.append((run, 1))
      return
    write_fake_run(run.path, rundir.load_config(run.path), run.row, run.seed,
                   'partial' if outcome == 'sigterm' else outcome)
    self.ended.append((run, 2 if outcome == 'diverged' else 0))

  def wait(self, timeout):
    del timeout
    ended, self.ended = self.ended, []
    return ended

  def retry(self, run) -> bool:
    if self.retried.count(run.key) < self.retries:
      self.retried.append(run.key)
      return True
    return False

  def forward(self, signum) -> None:
    self.signals.append(signum)

  def failure(self, run, status) -> str:
    return f'run {run.label} failed: exit status {status}; log: {os.path.join(run.path, rundir.LOG)}'
