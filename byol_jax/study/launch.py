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

The launchers here: `InProcess` (this process, one run after another), `LocalProcesses` (N processes at a time,
each pinned to one CPU core) and `LocalGroups` (--batch_runs=K: groups of up to K runs, each group one process
`python -m byol_jax.main_batched DIR...` training its runs as one program, N processes at a time);
`byol_jax/study/slurm.py` has `Slurm` (each run a SLURM job, through submitit). The
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


def main_batched_command(paths) -> list[str]:
  """The command that trains (or resumes) the runs in `paths` together (byol_jax/main_batched.py)."""
  return [sys.executable, '-m', 'byol_jax.main_batched', *[os.path.abspath(p) for p in paths]]


def signal_running(procs: dict, signum) -> None:
  """Passes a signal on to every training process still running ({slot: (runs, Popen, log)})."""
  for _, proc, _ in procs.values():
    if proc.poll() is None:
      proc.send_signal(signum)


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
    signal_running(self.procs, signum)

  failure = staticmethod(failure)


class LocalGroups:
  """--batch_runs=K: the runs handed to it train in groups of up to K, each group one process `python -m
  byol_jax.main_batched DIR...` (one compiled program for its runs, byol_jax/train_batched.py), `n` processes at a
  time (on CPU with n > 1 each pinned to one core, as LocalProcesses; on a GPU not: a process's compilation and
  host feed use every core). A group holds runs that share one program and start
  from the same step, in the study's order (train_batched.group_runs, formed when a process is free); a run that
  fits no group trains alone, as LocalProcesses trains it. A group's output goes to WORKDIR/.groups/<its first
  run>.log, each run's own lines to its log.txt. The study hands every pending run at once (slots None), so that
  groups form over the whole study, not a window of it."""
  slots = None
  detached = False

  def __init__(self, n: int, k: int, workdir: str, pin: bool = False):
    cores = sorted(os.sched_getaffinity(0))
    self.n, self.k, self.workdir = n, k, workdir
    self.cores = [cores[i % len(cores)] for i in range(n)] if pin and n > 1 else None
    self.waiting = []  # runs handed over, not started yet, in the study's order
    self.procs = {}  # slot -> (runs, Popen, log file)
    self.logs = {}  # run key -> the log of the process that trained it last
    self.launched = {}  # run key -> when its process started (the study's progress and run times read it)
    self.stopped = []  # runs never started because of a signal: reported ended at the next wait

  def start(self, run) -> None:
    self.waiting.append(run)

  def _next_group(self) -> list:
    from byol_jax import train_batched  # (imports JAX: the study process has started it by now)
    starts = [train_batched.saved_step(r.path) for r in self.waiting]
    first = train_batched.group_runs([r.config for r in self.waiting], self.k, starts)[0]
    group = [self.waiting[i] for i in first]
    self.waiting = [r for i, r in enumerate(self.waiting) if i not in first]
    return group

  def _launch(self, group) -> None:
    slot = next(i for i in range(self.n) if i not in self.procs)
    fds = [rundir.lock_fd(r.path) for r in group]  # the study holds the runs' locks: the process gets them
    if len(group) == 1:
      path = run_log(group[0])
      command = main_command(group[0].path)
      env = dict(os.environ, **{rundir.HELD_FD_ENV: str(fds[0])}) if fds[0] is not None else None
    else:
      path = os.path.join(self.workdir, '.groups', f'{group[0].row}-seed{group[0].seed}.log')
      command = main_batched_command([r.path for r in group])
      from byol_jax import train_batched
      env = dict(os.environ, **{train_batched.GROUP_LOCK_FDS_ENV: ','.join(str(fd) for fd in fds)})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    log = open(path, 'a')
    held = tuple(fd for fd in fds if fd is not None)
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, pass_fds=held)
    if self.cores:  # pinned from here, as LocalProcesses does (its comment says why)
      os.sched_setaffinity(proc.pid, {self.cores[slot]})
    self.procs[slot] = (group, proc, log)
    for r in group:
      self.logs[r.key] = path
      self.launched[r.key] = time.time()

  def started_at(self, run) -> float | None:
    """When the run's process started; None while it waits for a free one."""
    return self.launched.get(run.key)

  def wait(self, timeout: float) -> list:
    while self.waiting and len(self.procs) < self.n:
      self._launch(self._next_group())
    deadline = time.time() + timeout
    while not self.stopped:
      ended = [slot for slot, (_, proc, _) in self.procs.items() if proc.poll() is not None]
      if ended or not self.procs or time.time() >= deadline:
        break
      time.sleep(min(0.1, max(0.0, deadline - time.time())))
    out, self.stopped = [(r, 0) for r in self.stopped], []
    for slot in [slot for slot, (_, proc, _) in self.procs.items() if proc.poll() is not None]:
      group, proc, log = self.procs.pop(slot)
      log.close()
      out += [(r, proc.returncode) for r in group]
    return out

  def retry(self, run) -> bool:
    del run
    return False

  def forward(self, signum) -> None:
    signal_running(self.procs, signum)
    # Runs not started yet stay as they are (new, or at their checkpoint): the same command trains them.
    self.stopped, self.waiting = self.stopped + self.waiting, []

  def failure(self, run, status) -> str:
    log = self.logs.get(run.key, run_log(run))
    return (f'run {run.label} failed: `python -m byol_jax.main_batched` (its group\'s process) exited with status '
            f'{status}; log: {log}') if log != run_log(run) else failure(run, status)
