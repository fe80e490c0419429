"""Launchers: where a study's runs train. Every launcher trains a run the same way, as `python -m byol_jax.main
--config=configs/run.py:DIR --workdir=DIR` on the run directory whose config.json the study wrote before launching
(`main_command`), and every launcher has the same interface:

  slots                 runs it trains at a time (None: as many as there are)
  start(run)            starts training the run (study.plan.Run)
  wait(timeout)         the [(run, exit status)] whose training ended since the last call, after at most timeout s
  retry(run)            whether a run that ended unfinished is started again (SLURM: a lost job, while retries last)
  forward(signum)       passes a signal (SIGTERM) on to what trains
  failure(run, status)  one line: which run failed, how, and the log that says why
  detached              whether runs go on without this process (SLURM), so the study may stop waiting

The launchers here: `InProcess` (this process, one run after another) and `LocalProcesses` (N processes at a time,
each pinned to one CPU core); `byol_jax/study/slurm.py` has `Slurm` (each run a SLURM job, through submitit). The
outcome of a run is read from its run directory (byol_jax/rundir.py), never from the launcher: runner.run_study
keeps the books.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

from byol_jax import rundir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_CONFIG = os.path.join(ROOT, 'configs', 'run.py')  # the config of a run directory: its config.json


def main_command(path: str) -> list[str]:
  """The command that trains (or resumes) the run in `path` from its config.json."""
  path = os.path.abspath(path)
  return [sys.executable, '-m', 'byol_jax.main', f'--config={RUN_CONFIG}:{path}', f'--workdir={path}']


def run_log(run) -> str:
  return os.path.join(run.path, rundir.LOG)


def failure(run, status) -> str:
  return f'run {run.label} failed: `python -m byol_jax.main` exited with status {status}; log: {run_log(run)}'


class InProcess:
  """One run after another in this process: byol_jax.main's work (the run directory's config, then train.run)
  without a new process, so compiled programs are shared between runs of the same shapes. The run's output goes
  to DIR/log.txt."""
  slots = 1
  detached = False

  def __init__(self):
    self._ended = []

  def start(self, run) -> None:
    from byol_jax import train
    status = 0
    os.makedirs(run.path, exist_ok=True)
    with open(run_log(run), 'a') as log, contextlib.redirect_stdout(log):
      try:
        train.run(rundir.load_config(run.path), run.path)
      except train.TrainingDiverged as e:  # diverged.json says so; byol_jax.main exits 2 here
        print(f'error: {e}', flush=True)
        status = 2
    self._ended.append((run, status))

  def wait(self, timeout: float) -> list:
    del timeout
    ended, self._ended = self._ended, []
    return ended

  def retry(self, run) -> bool:
    del run
    return False

  def forward(self, signum) -> None:
    del signum  # train.run's own handler has it: the run saves its checkpoint and returns

  failure = staticmethod(failure)


class LocalProcesses:
  """`n` runs at a time, each `python -m byol_jax.main` in its own process pinned to one CPU core (the runs'
  configs must say train.cpu_devices=1: one JAX device per process). Output: DIR/log.txt of each run."""
  detached = False

  def __init__(self, n: int):
    cores = sorted(os.sched_getaffinity(0))
    self.slots = n
    self.cores = [cores[i % len(cores)] for i in range(n)]
    self.procs = {}  # core slot -> (run, Popen, log file)

  def start(self, run) -> None:
    slot = next(i for i in range(self.slots) if i not in self.procs)
    os.makedirs(run.path, exist_ok=True)
    log = open(run_log(run), 'a')
    fd = rundir.lock_fd(run.path)  # the study holds the run's lock: the process gets it (one holder, no gap)
    env = dict(os.environ, **{rundir.HELD_FD_ENV: str(fd)}) if fd is not None else None
    proc = subprocess.Popen(main_command(run.path), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                            pass_fds=(fd,) if fd is not None else ())
    # Pinned from here, not by preexec_fn (unsafe with JAX's threads in this process): the child's own threads
    # start a second later, after its imports, and inherit the pinning.
    os.sched_setaffinity(proc.pid, {self.cores[slot]})
    self.procs[slot] = (run, proc, log)

  def wait(self, timeout: float) -> list:
    deadline = time.time() + timeout
    while True:
      ended = [(slot, run, proc.returncode) for slot, (run, proc, _) in self.procs.items() if proc.poll() is not None]
      if ended or not self.procs or time.time() >= deadline:
        break
      time.sleep(min(0.1, max(0.0, deadline - time.time())))
    for slot, _, _ in ended:
      self.procs.pop(slot)[2].close()
    return [(run, code) for _, run, code in ended]

  def retry(self, run) -> bool:
    del run
    return False

  def forward(self, signum) -> None:
    for _, proc, _ in self.procs.values():
      if proc.poll() is None:
        proc.send_signal(signum)

  failure = staticmethod(failure)
