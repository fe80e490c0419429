"""--launcher=slurm: each pending run of a study is a SLURM job (the runs a command starts together: one job
array), submitted through submitit.

  python -m byol_jax.study --config=configs/study/<name>.py --workdir=DIR --launcher=slurm
      [--slurm_partition=P] [--slurm_gpus=G] [--slurm_cpus=C] [--slurm_nodes=N] [--slurm_tasks_per_node=T]
      [--slurm_time=MINUTES] [--slurm_mem=32G] [--slurm_args=qos=high,account=lab] [--slurm_max_retries=3]
      [--no_wait]

A job runs what every launcher runs (byol_jax/study/launch.py): `python -m byol_jax.main
--config=configs/run.py:DIR/<row>/seed<k> --workdir=DIR/<row>/seed<k>`, on the run directory whose config.json the
study wrote before submitting; the config crosses to the job as that file, not as a pickled object or a command
line. A job of several processes (--slurm_nodes x --slurm_tasks_per_node > 1) passes byol_jax.main's multi-host
flags (--coordinator_address, --num_processes, --process_id) to each process; one process per node sees every GPU
of its node.

The study waits (runner.run_study, the one bookkeeping loop of every launcher), asking SLURM every --slurm_poll
seconds, and prints a line per finished run and rewrites the results as runs finish. With --no_wait it returns once
the jobs are submitted; the same command run later collects: finished runs are skipped, runs whose job is still
queued or running (DIR/.slurm_jobs.json holds each run's job id, asked of `squeue`) are not submitted again.

A job that ends without its run finished (preempted, cancelled with scancel, failed, out of time, a node lost)
is submitted again, up to --slurm_max_retries times; the run resumes from its checkpoint. Near the time limit
SLURM signals the job (USR2, 90 s before) and submitit requeues it under the same job id after the run has
saved a checkpoint (helpers.Checkpointable), also at most --slurm_max_retries times.

Logs: DIR/<row>/seed<k>/log.txt (byol_jax.main's output, as with every launcher); DIR/.slurm/<job id>_<task>_log.out
/ .err (the job's own, submitit's).
Bad input gets one line naming it, exit 2: no SLURM reachable, an unknown partition, sbatch refusing the jobs,
a run whose job failed for good (with the path of its log).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import submitit

from byol_jax import rundir
from byol_jax.study import launch
from byol_jax.study.plan import StudyError

JOBS_FILE = '.slurm_jobs.json'
LOG_FOLDER = '.slurm'


class SlurmError(StudyError):
  """SLURM cannot take or finish the study; the message is one line naming the cause."""


@dataclasses.dataclass(frozen=True)
class Options:
  partition: str = ''
  gpus: int = 0             # per node
  cpus: int = 0             # per task; 0: SLURM's default
  nodes: int = 1
  tasks_per_node: int = 1
  time: int = 240           # minutes; a run past it is requeued from its checkpoint
  mem: str = ''             # e.g. '32G'; '': SLURM's default
  args: tuple = ()          # more sbatch options, 'key=value' or 'key'
  max_retries: int = 3
  poll: float = 15.0        # seconds between looks at SLURM while waiting

  def check(self) -> None:
    for name, value, low in (('gpus', self.gpus, 0), ('cpus', self.cpus, 0), ('nodes', self.nodes, 1),
                             ('tasks_per_node', self.tasks_per_node, 1), ('time', self.time, 1),
                             ('max_retries', self.max_retries, 0)):
      if value < low:
        raise SlurmError(f'--slurm_{name}={value} must be >= {low}')
    if self.poll <= 0:
      raise SlurmError(f'--slurm_poll={self.poll} must be positive')
    sbatch_args(self.args)

  @property
  def num_tasks(self) -> int:
    return self.nodes * self.tasks_per_node


def sbatch_args(args) -> dict:
  """--slurm_args entries ('qos=high', '--account=lab', 'exclusive') as submitit's additional_parameters."""
  out = {}
  for a in args:
    key, eq, value = a.strip().lstrip('-').partition('=')
    if not key or ' ' in key:
      raise SlurmError(f'--slurm_args entry {a!r}: write sbatch options as key=value (e.g. qos=high) or key')
    out[key.replace('-', '_')] = value if eq else True
  return out


# ----------------------------------------------------------------------------------------------------
# SLURM: is it there, what is running
# ----------------------------------------------------------------------------------------------------
def _last_line(text: str) -> str:
  lines = [l.strip() for l in (text or '').strip().splitlines() if l.strip()]
  return lines[-1] if lines else ''


def _slurm(cmd: list[str], timeout: float = 60) -> str:
  """stdout of a SLURM client command; SlurmError (one line) when it is missing, fails or hangs."""
  if shutil.which(cmd[0]) is None:
    raise SlurmError(f'no SLURM reachable: `{cmd[0]}` not found (install SLURM\'s client tools on this machine, '
                     'or run the study with --launcher=local)')
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    raise SlurmError(f'no SLURM reachable: `{" ".join(cmd)}` did not answer in {timeout:.0f} s') from None
  if proc.returncode:
    raise SlurmError(f'no SLURM reachable: `{" ".join(cmd)}` failed: '
                     f'{_last_line(proc.stderr) or _last_line(proc.stdout) or f"exit status {proc.returncode}"}')
  return proc.stdout


def partitions() -> tuple[list[str], str]:
  """(the cluster's partitions, the default one) from sinfo."""
  names, default = [], ''
  for line in _slurm(['sinfo', '-h', '-o', '%P']).split():
    name = line.rstrip('*')
    if name not in names:
      names.append(name)
    if line.endswith('*'):
      default = name
  return names, default


def check_cluster(partition: str) -> str:
  """The partition the jobs go to (the default one when ''); SlurmError if SLURM or the partition is not there."""
  names, default = partitions()
  if partition and partition not in names:
    listed = ', '.join(f'{n} (default)' if n == default else n for n in names) or 'none'
    raise SlurmError(f'unknown SLURM partition {partition!r}; this cluster has: {listed}')
  return partition or default


def queued_jobs() -> dict[str, str]:
  """Job id -> state of this user's jobs that SLURM still holds (pending, running, requeued, completing...),
  array tasks one by one ('123_4'). Asks squeue, not sacct: sacct needs the accounting database, which many
  clusters (and the tests' one-node cluster) do not run."""
  out = {}
  for attempt in range(3):  # a controller busy or restarting answers a few seconds later
    try:
      text = _slurm(['squeue', '-h', '-r', '--me', '-o', '%i|%T'])
      break
    except SlurmError:
      if attempt == 2:
        raise
      time.sleep(5)
  for line in text.splitlines():
    job_id, _, state = line.strip().partition('|')
    if job_id:
      out[job_id] = state
  return out


def ended_state(job_id: str) -> str:
  """How a job that left the queue ended (COMPLETED, CANCELLED, FAILED, TIMEOUT, ...) while slurmctld still
  remembers it (MinJobAge, 5 minutes by default); 'ended' after."""
  try:
    text = subprocess.run(['scontrol', 'show', 'job', '-o', job_id], capture_output=True, text=True,
                          timeout=30).stdout
  except (OSError, subprocess.TimeoutExpired):
    return 'ended'
  for field in text.split():
    if field.startswith('JobState='):
      return field.split('=', 1)[1]
  return 'ended'


# ----------------------------------------------------------------------------------------------------
# The job: one run, in its own process
# ----------------------------------------------------------------------------------------------------
_CHILD = {}  # the running byol_jax.main of this job (not pickled with the job)


def multihost_args() -> list[str]:
  """byol_jax.main's multi-host flags for this task of a job with several tasks (none for one task): process 0
  of the job is the coordinator; the port is derived from the job id, so concurrent jobs do not collide."""
  env = submitit.JobEnvironment()
  if env.num_tasks <= 1:
    return []
  port = 20000 + int(env.raw_job_id) % 20000
  return [f'--coordinator_address={env.hostnames[0]}:{port}', f'--num_processes={env.num_tasks}',
          f'--process_id={env.global_rank}']


class RunJob(submitit.helpers.Checkpointable):
  """One run in a SLURM job: launch.main_command(path) (byol_jax.main on the run directory). Picklable (strings
  only). Raises when the run did not finish, so the job reads as failed."""

  def __init__(self, path: str, label: str):
    self.path, self.label = os.path.abspath(path), label

  def command(self) -> list[str]:
    return launch.main_command(self.path) + multihost_args()

  def __call__(self) -> str:
    # SLURM signals every process of the job (USR2 before the time limit); the run must not die of it: submitit
    # handles it here (checkpoint below). An ignored signal stays ignored across exec.
    previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    rank = submitit.JobEnvironment().global_rank
    log = open(os.path.join(self.path, rundir.LOG), 'a') if rank == 0 else None  # as every launcher: DIR/log.txt
    try:
      proc = subprocess.Popen(self.command(), cwd=launch.ROOT, stdout=log, stderr=subprocess.STDOUT if log else None)
    finally:
      signal.signal(signal.SIGUSR2, previous)
      if log:
        log.close()
    _CHILD['proc'] = proc
    while proc.poll() is None:  # polling, not wait(): the signal handler below polls the same process
      time.sleep(1.0)
    if rank:  # process 0 of a multi-process run writes the run's files
      return self.path
    if not rundir.finished(self.path):
      raise RuntimeError(f'run {self.label}: `python -m byol_jax.main` exited with status {proc.returncode} before '
                         f'the run finished (SIGTERM: preempted or cancelled); its checkpoint is in {self.path}')
    return self.path

  def checkpoint(self, *args, **kwargs):
    """submitit calls this on USR2 (time limit near, or preemption): the run saves its checkpoint (SIGTERM), then
    the job is requeued with a fresh RunJob, which resumes it."""
    proc = _CHILD.get('proc')
    if proc is not None and proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
      deadline = time.time() + 75  # inside submitit's 90 s between USR2 and the kill
      while proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    return submitit.helpers.DelayedSubmission(RunJob(self.path, self.label))


# ----------------------------------------------------------------------------------------------------
# The launcher
# ----------------------------------------------------------------------------------------------------
def read_jobs(workdir: str) -> dict:
  """DIR/.slurm_jobs.json: 'row:seed' -> {'job_id', 'attempts', 'log'}."""
  return rundir.read_json(os.path.join(workdir, JOBS_FILE)) or {}


def _write_jobs(workdir: str, jobs: dict) -> None:
  path = os.path.join(workdir, JOBS_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(jobs, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)


@contextlib.contextmanager
def _locked(workdir: str):
  """One launcher at a time decides what to submit (two collecting commands must not both resubmit a run)."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, JOBS_FILE + '.lock'), 'w') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def make_executor(workdir: str, opts: Options, partition: str, name: str):
  executor = submitit.SlurmExecutor(folder=os.path.join(workdir, LOG_FOLDER), max_num_timeout=opts.max_retries)
  params = dict(job_name=f'byol_{name}', partition=partition or None, time=opts.time, nodes=opts.nodes,
                ntasks_per_node=opts.tasks_per_node, additional_parameters=sbatch_args(opts.args))
  if opts.gpus:
    params['gpus_per_node'] = opts.gpus
  if opts.cpus:
    params['cpus_per_task'] = opts.cpus
  if opts.mem:
    params['mem'] = opts.mem
  executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
  return executor


def _plural(n: int, word: str) -> str:
  return f'{n} {word}{"s" if n != 1 else ""}'


class Slurm:
  """The launcher (byol_jax/study/launch.py's interface): start() gathers runs, wait() submits the gathered ones as
  one job array (a run whose job an earlier command submitted and SLURM still holds is adopted, not submitted
  again) and reports the runs whose job left SLURM's queue. Checks the cluster and partition when made."""
  slots = None
  detached = True  # the jobs go on without this process

  def __init__(self, workdir: str, opts: Options, name: str, out=None):
    opts.check()
    self.partition = check_cluster(opts.partition)  # before anything is written
    self.workdir, self.opts, self.name = workdir, opts, name
    self.out = out or sys.stdout
    self.gathered, self.active, self.given_up = [], {}, []
    self.queued, self.asked_at = {}, 0.0

  def _say(self, line: str) -> None:
    self.out.write(line + '\n')
    self.out.flush()

  def start(self, run) -> None:
    self.gathered.append(run)

  def _submit_gathered(self) -> None:
    runs, self.gathered = self.gathered, []
    with _locked(self.workdir):
      jobs = read_jobs(self.workdir)
      self.queued, self.asked_at = queued_jobs(), time.time()
      adopted = [r for r in runs if jobs.get(r.key, {}).get('job_id') in self.queued]
      spent = [r for r in runs if r not in adopted and jobs.get(r.key, {}).get('attempts', 0) > self.opts.max_retries]
      new = [r for r in runs if r not in adopted and r not in spent]
      if new:
        self._submit(new, jobs)
        _write_jobs(self.workdir, jobs)
    if adopted:
      self._say(f'{_plural(len(adopted), "run")} already in SLURM (job '
                f'{", ".join(jobs[r.key]["job_id"] for r in adopted)}): not submitted again')
    if new:
      ids = sorted({jobs[r.key]['job_id'].split('_')[0] for r in new})
      self._say(f'submitted {_plural(len(new), "run")} to SLURM as job {", ".join(ids)}: '
                f'{", ".join(r.label for r in new)}')
    for r in new:  # SLURM holds them now, whatever squeue said a moment before
      self.queued[jobs[r.key]['job_id']] = 'SUBMITTED'
    for r in adopted + new:
      self.active[r.key] = r
    self.given_up += spent

  def _submit(self, runs: list, jobs: dict) -> None:
    executor = make_executor(self.workdir, self.opts, self.partition, self.name)
    try:
      with executor.batch():
        submitted = [executor.submit(RunJob(r.path, r.label)) for r in runs]
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as e:
      detail = _last_line(getattr(e, 'stderr', None) or getattr(e, 'output', None) or '') or _last_line(str(e))
      if isinstance(detail, bytes):
        detail = detail.decode(errors='replace')
      raise SlurmError(f'sbatch refused the jobs: {detail}') from None
    for r, job in zip(runs, submitted):
      entry = jobs.setdefault(r.key, {'attempts': 0})
      entry.update(job_id=str(job.job_id), attempts=entry['attempts'] + 1, log=str(job.paths.stderr))

  def wait(self, timeout: float) -> list:
    if self.gathered:
      self._submit_gathered()
    ended, self.given_up = [(r, 1) for r in self.given_up], []
    deadline = time.time() + timeout
    while not ended and self.active:
      if time.time() - self.asked_at >= self.opts.poll:
        self.queued, self.asked_at = queued_jobs(), time.time()  # before the run folders: a job that ends in
      jobs = read_jobs(self.workdir)                              # between leaves its summary behind
      for key, r in list(self.active.items()):
        if rundir.finished(r.path) or jobs.get(key, {}).get('job_id') not in self.queued:
          ended.append((self.active.pop(key), 0 if rundir.finished(r.path) else 1))
      if ended or time.time() >= deadline:
        break
      time.sleep(min(1.0, max(0.0, deadline - time.time())))
    return ended

  def retry(self, run) -> bool:
    entry = read_jobs(self.workdir).get(run.key)
    if entry is None or entry['attempts'] > self.opts.max_retries:
      return False
    self._say(f'{run.label}: SLURM job {entry["job_id"]} ended {ended_state(entry["job_id"])} before the run '
              f'finished; submitting it again (attempt {entry["attempts"] + 1} of {self.opts.max_retries + 1})')
    return True

  def failure(self, run, status) -> str:
    del status
    entry = read_jobs(self.workdir).get(run.key, {})
    attempts = _plural(entry.get('attempts', 0), 'attempt')
    return (f'run {run.label} failed for good: SLURM job {entry.get("job_id")} ended '
            f'{ended_state(entry.get("job_id", ""))} after {attempts} (--slurm_max_retries={self.opts.max_retries}); '
            f'log: {launch.run_log(run)} (the job\'s: {entry.get("log")})')

  def forward(self, signum) -> None:
    del signum  # the jobs are SLURM's: this process only stops waiting for them

  def running(self) -> dict:
    """state -> count of the active runs' jobs, as SLURM said last."""
    jobs, out = read_jobs(self.workdir), {}
    for key in self.active:
      state = self.queued.get(jobs.get(key, {}).get('job_id'), 'ended')
      out[state] = out.get(state, 0) + 1
    return out
