"""Command line: python -m byol_jax.main_batched DIR1 DIR2 ...

Trains the runs of the given run directories (each holding its config.json, as a study writes them) together, as
one compiled program per group (byol_jax/train_batched.py): the runs that can share a program and start from the
same step (each run's newest checkpoint that verifies) form a group, in the order given; a run that fits no group
trains alone, as `python -m byol_jax.main --config=configs/run.py:DIR --workdir=DIR` would. Each run directory ends
as if the run had trained alone. A study's `--batch_runs=K` starts one such process per group of up to K runs.

Exit status: 0 when every run finished, diverged (diverged.json) or was stopped by SIGTERM (each saved its
checkpoint; the same command resumes); 130 after Ctrl-C; 2 with one line per run that could not train.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def take_locks(workdirs) -> None:
  """Holds every run's lock for this process (handed over by the study when it started this one); RunDirError
  naming the holder when another process trains one of them."""
  from byol_jax import rundir, train_batched
  fds = [fd for fd in os.environ.pop(train_batched.GROUP_LOCK_FDS_ENV, '').split(',') if fd]
  for i, workdir in enumerate(workdirs):
    if i < len(fds):
      os.environ[rundir.HELD_FD_ENV] = fds[i]  # read by rundir.try_lock: the descriptor of this run's lock
    try:
      if not rundir.try_lock(workdir):
        raise rundir.RunDirError(f'{workdir} is in use: {rundir.holder(workdir)} is training this run; wait for '
                                 'it to end, or stop it first')
    finally:
      os.environ.pop(rundir.HELD_FD_ENV, None)


def train_alone(config, workdir) -> dict:
  """A run that fits no group: train.run, its output in its log.txt as a study's launchers write it."""
  from byol_jax import rundir, train
  with open(os.path.join(workdir, rundir.LOG), 'a') as log, contextlib.redirect_stdout(log):
    return train.run(config, workdir)


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    print('error: python -m byol_jax.main_batched DIR1 DIR2 ...: give the run directories (each with its '
          'config.json) to train together', file=sys.stderr)
    sys.exit(2)
  if not FLAGS['verbosity'].present:  # orbax and jax log every checkpoint at INFO; keep the log readable
    logging.set_verbosity(logging.WARNING)
  import jax
  from byol_jax import config as config_lib, rundir, train, train_batched
  failed, preempted = [], None
  try:
    configs = [config_lib.finalize(rundir.load_config(w)) for w in workdirs]
    config_lib.set_cpu_devices(configs[0])  # before JAX starts
    take_locks(workdirs)
    if jax.default_backend() == 'cpu':
      print(train_batched.CPU_NOTE, flush=True)
    # Each run's newest checkpoint that verifies (a damaged one is moved aside here, as train.run does).
    starts = [train_batched.verified_step(w) for w in workdirs]
    groups = train_batched.group_runs(configs, len(configs), starts)
  except (config_lib.ConfigError, rundir.RunDirError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  for group in groups:
    if preempted is not None:
      break
    dirs = [workdirs[i] for i in group]
    try:
      if len(group) == 1:
        print(f'{dirs[0]}: trains alone (it can share no program and start step with the others)', flush=True)
        outcomes = [train_alone(configs[group[0]], dirs[0])]
      else:
        print(f'training {len(group)} runs together: {", ".join(dirs)}', flush=True)
        outcomes = train_batched.run_group([configs[i] for i in group], dirs)
    except train.TrainingDiverged:  # a run alone: diverged.json says so
      continue
    except (config_lib.ConfigError, rundir.RunDirError, FileNotFoundError) as e:
      failed.append(f'error: {", ".join(dirs)}: {e}')
      print(failed[-1], file=sys.stderr, flush=True)
      continue
    except KeyboardInterrupt:  # Ctrl-C while starting up, or during a final evaluation (which then finished)
      print('stopped by Ctrl-C; run the same command to resume', file=sys.stderr)
      sys.exit(130)
    stops = [o for o in outcomes if o.get('preempted')]
    if stops:
      preempted = stops[0].get('signal')
  if failed:
    sys.exit(2)
  if preempted is not None:
    sys.exit(130 if preempted == signal.SIGINT else 0)


if __name__ == '__main__':
  app.run(main)
