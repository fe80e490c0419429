"""--launcher=slurm: a study's pending runs as the tasks of a SLURM job array, submitted through submitit.

  python -m byol_jax.study --config=configs/study/<name>.py --workdir=DIR --launcher=slurm
      [--slurm_partition=P] [--slurm_gpus=G] [--slurm_cpus=C] [--slurm_nodes=N] [--slurm_tasks_per_node=T]
      [--slurm_time=MINUTES] [--slurm_mem=32G] [--slurm_args=qos=high,account=lab] [--slurm_max_retries=3]
      [--no_wait]

Each pending (row, seed) becomes one task of one job array. The task runs the ordinary study command for that
run alone, `python -m byol_jax.study <the same --config and overrides> --runs=row:seed`, in the submitting
folder, so each job is an ordinary resumable run in DIR/<row>/seed<k>/ and the config crosses to the job as
its file and overrides, not as a pickled object. A job of several processes (--slurm_nodes x
--slurm_tasks_per_node > 1) passes byol_jax.main's multi-host flags (--coordinator_address, --num_processes,
--process_id) to each process; one process per node sees every GPU of its node.

The command waits, polling SLURM every --slurm_poll seconds, prints a line per finished run and rewrites the
results (DIR/results.json, .md, .png) as runs finish. With --no_wait it returns once the jobs are submitted;
the same command run later collects: finished runs are skipped, runs whose job is still queued or running
(DIR/.slurm_jobs.json holds each run's job id, asked of `squeue`) are not submitted again.

A job that ends without its run finished (preempted, cancelled with scancel, failed, out of time, a node lost)
is submitted again, up to --slurm_max_retries times; the run resumes from its checkpoint. Near the time limit
SLURM signals the job (USR2, 90 s before) and submitit requeues it under the same job id after the run has
saved a checkpoint (helpers.Checkpointable), also at most --slurm_max_retries times.

Logs: DIR/.slurm/<job id>_<task>_log.out / .err (the job's output; the run's own log is DIR/<row>/seed<k>/log.txt).
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

from byol_jax.study.plan import StudyError
from byol_jax.study.records import export_run, read_json, run_dir
from byol_jax.study.results import write_results
from byol_jax.study import runner

JOBS_FILE = '.slurm_jobs.json'
LOG_FOLDER = '.slurm'
# The launcher's own flags: the jobs run the study command without them (and without --record, which this
# process keeps, so jobs never write the record at the same time).
LAUNCHER_FLAGS = ('--launcher', '--no_wait', '--nono_wait', '--record', '--coordinator_address', '--num_processes',
                  '--process_id')
LAUNCHER_PREFIXES = ('--slurm_',)


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


def job_args(argv: list[str]) -> list[str]:
  """The study command line a job runs: the parent's, without the launcher's flags and the ones the parent
  consumes (runner.forwarded_args: --parallel, --rows, --reuse, --runs)."""
  out, skip = [], False
  for a in runner.forwarded_args(argv):
    name = a.split('=', 1)[0]
    if skip:
      skip = False
    elif name in LAUNCHER_FLAGS or name.startswith(LAUNCHER_PREFIXES):
      skip = '=' not in a and name not in ('--no_wait', '--nono_wait')  # '--flag value': drop the value too
    else:
      out.append(a)
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
# The job: one run of the study, in its own process
# ----------------------------------------------------------------------------------------------------
_CHILD = {}  # the running study process of this job (not pickled with the job)


def multihost_args() -> list[str]:
  """byol_jax.main's multi-host flags for this task of a job with several tasks (none for one task): process 0
  of the job is the coordinator; the port is derived from the job id, so concurrent jobs do not collide."""
  env = submitit.JobEnvironment()
  if env.num_tasks <= 1:
    return []
  port = 20000 + int(env.raw_job_id) % 20000
  return [f'--coordinator_address={env.hostnames[0]}:{port}', f'--num_processes={env.num_tasks}',
          f'--process_id={env.global_rank}']


class StudyRun(submitit.helpers.Checkpointable):
  """One (row, seed) of a study, run in a SLURM job: `python -m byol_jax.study <args> --runs=row:seed` in
  `cwd`. Picklable (strings only). Raises when the run did not finish, so the job reads as failed."""

  def __init__(self, args: list[str], cwd: str, workdir: str, row: str, seed: int):
    self.args, self.cwd, self.workdir, self.row, self.seed = list(args), cwd, workdir, row, int(seed)

  def command(self) -> list[str]:
    return [sys.executable, '-m', 'byol_jax.study', *self.args, '--launcher=local', '--parallel=1',
            f'--runs={self.row}:{self.seed}', *multihost_args()]

  def __call__(self) -> str:
    # SLURM signals every process of the job (USR2 before the time limit); the run must not die of it: submitit
    # handles it here (checkpoint below). An ignored signal stays ignored across exec.
    previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
      proc = subprocess.Popen(self.command(), cwd=self.cwd)
    finally:
      signal.signal(signal.SIGUSR2, previous)
    _CHILD['proc'] = proc
    while proc.poll() is None:  # polling, not wait(): the signal handler below polls the same process
      time.sleep(1.0)
    path = os.path.join(self.cwd, run_dir(self.workdir, self.row, self.seed))
    if proc.returncode:
      raise RuntimeError(f'run {self.row}/seed{self.seed}: the study command exited with status {proc.returncode}')
    if submitit.JobEnvironment().global_rank:  # process 0 of a multi-process run writes the run's files
      return path
    if not any(os.path.exists(os.path.join(path, f)) for f in ('summary.json', 'diverged.json')):
      raise RuntimeError(f'run {self.row}/seed{self.seed} stopped before its end (SIGTERM: preempted or '
                         f'cancelled); its checkpoint is in {path}')
    return path

  def checkpoint(self, *args, **kwargs):
    """submitit calls this on USR2 (time limit near, or preemption): the run saves its checkpoint (SIGTERM), then
    the job is requeued with a fresh StudyRun, which resumes it."""
    proc = _CHILD.get('proc')
    if proc is not None and proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
      deadline = time.time() + 75  # inside submitit's 90 s between USR2 and the kill
      while proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    return submitit.helpers.DelayedSubmission(StudyRun(self.args, self.cwd, self.workdir, self.row, self.seed))


# ----------------------------------------------------------------------------------------------------
# The launcher
# ----------------------------------------------------------------------------------------------------
def _key(r) -> str:
  return f'{r["row"]}:{r["seed"]}'


def _label(r) -> str:
  return f'{r["row"]}/seed{r["seed"]}'


def read_jobs(workdir: str) -> dict:
  """DIR/.slurm_jobs.json: 'row:seed' -> {'job_id', 'attempts', 'log'}."""
  return read_json(os.path.join(workdir, JOBS_FILE)) or {}


def _write_jobs(workdir: str, jobs: dict) -> None:
  path = os.path.join(workdir, JOBS_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(jobs, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)


@contextlib.contextmanager
def _locked(workdir: str):
  """One launcher at a time decides what to submit (two collecting commands must not both resubmit a run)."""
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


def submit(executor, runs: list, args: list[str], workdir: str, jobs: dict) -> None:
  """One job array for `runs` (a single job for one run); records each run's job id and log in `jobs`."""
  cwd = os.getcwd()
  try:
    with executor.batch():
      submitted = [executor.submit(StudyRun(args, cwd, workdir, r['row'], r['seed'])) for r in runs]
  except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as e:
    detail = _last_line(getattr(e, 'stderr', None) or getattr(e, 'output', None) or '') or _last_line(str(e))
    if isinstance(detail, bytes):
      detail = detail.decode(errors='replace')
    raise SlurmError(f'sbatch refused the jobs: {detail}') from None
  for r, job in zip(runs, submitted):
    entry = jobs.setdefault(_key(r), {'attempts': 0})
    entry.update(job_id=str(job.job_id), attempts=entry['attempts'] + 1, log=str(job.paths.stderr))


def _finished(r) -> bool:
  return any(os.path.exists(os.path.join(r['path'], f)) for f in ('summary.json', 'diverged.json'))


def _export_finished(runs, record: str) -> None:
  """Adds to --record the runs finished here that it lacks (this process writes the record, never the jobs;
  runs a job finished while no command waited are added by the next call)."""
  for r in runs:
    if os.path.exists(os.path.join(r['path'], 'summary.json')) and not os.path.exists(
        os.path.join(run_dir(record, r['row'], r['seed']), 'summary.json')):
      export_run(r['path'], record, r['row'], r['seed'])


def collect_and_submit(runs, workdir, opts, executor_fn, args, out) -> tuple[list, list, list]:
  """One look at SLURM, under the lock: submits every unfinished run without a queued job (again, while retries
  last). Returns (runs whose job was already queued, runs submitted now, failure lines of runs out of retries)."""
  with _locked(workdir):
    jobs = read_jobs(workdir)
    queued = queued_jobs()  # before the run folders: a job that ends in between leaves its summary behind
    in_slurm, to_submit, failed = [], [], []
    for r in runs:
      if _finished(r):
        continue
      entry = jobs.get(_key(r))
      if entry and entry.get('job_id') in queued:
        in_slurm.append(r)
      elif entry and entry['attempts'] > opts.max_retries:
        attempts = f'{entry["attempts"]} attempt{"s" if entry["attempts"] > 1 else ""}'
        failed.append(f'run {_label(r)} failed for good: SLURM job {entry["job_id"]} ended '
                      f'{ended_state(entry["job_id"])} after {attempts} (--slurm_max_retries={opts.max_retries}); '
                      f'log: {entry["log"]}')
      else:
        if entry:
          out.write(f'{_label(r)}: SLURM job {entry["job_id"]} ended {ended_state(entry["job_id"])} '
                    f'before the run finished; submitting it again (attempt {entry["attempts"] + 1} of '
                    f'{opts.max_retries + 1})\n')
        to_submit.append(r)
    if to_submit:
      submit(executor_fn(), to_submit, args, workdir, jobs)
      _write_jobs(workdir, jobs)
      ids = sorted({jobs[_key(r)]['job_id'].split('_')[0] for r in to_submit})
      labels = ', '.join(_label(r) for r in to_submit)
      out.write(f'submitted {len(to_submit)} run{"s" if len(to_submit) > 1 else ""} to SLURM as job '
                f'{", ".join(ids)}: {labels}\n')
      out.flush()
    return in_slurm, to_submit, failed


def run_slurm(study, workdir: str, argv: list[str], opts: Options, rows_flag: str = '', reuse_dirs=(),
              record: str = '', wait: bool = True, out=None) -> dict:
  """Submits the study's pending runs to SLURM and (wait) waits for them, rewriting the results as runs
  finish. Returns run_study's dict ('waiting': runs still in SLURM when not waiting). Raises SlurmError (one line
  per failed run) when SLURM is not there, the partition is unknown, or a run failed for good."""
  out = out or sys.stdout
  opts.check()
  partition = check_cluster(opts.partition)  # before anything is written
  runs, linked = runner.prepare(study, workdir, rows_flag, reuse_dirs, record=record)
  name = study.get('name', '') or 'study'
  done_before = [r for r in runs if r['status'] in ('done', 'diverged')]
  if done_before:
    out.write(f'{len(done_before)} of {len(runs)} runs already finished in {workdir}: skipped'
              + (f' ({linked} from --reuse / --record)' if linked else '') + '\n')
  os.makedirs(workdir, exist_ok=True)
  args = job_args(argv)
  executor_fn = lambda: make_executor(workdir, opts, partition, name)  # pylint: disable=unnecessary-lambda-assignment
  pending = [r for r in runs if r['status'] not in ('done', 'diverged')]
  seen_done = {_key(r) for r in runs if _finished(r)}
  if record:
    _export_finished(runs, record)
  failed, last_line, first, in_slurm = [], None, True, pending
  try:
    while True:
      queued_before, submitted, failed = collect_and_submit(pending, workdir, opts, executor_fn, args, out)
      in_slurm = queued_before + submitted
      if first and queued_before:
        jobs = read_jobs(workdir)
        out.write(f'{len(queued_before)} runs already in SLURM (job '
                  f'{", ".join(jobs[_key(r)]["job_id"] for r in queued_before)}): not submitted again\n')
      first = False
      newly = [r for r in pending if _finished(r) and _key(r) not in seen_done]
      for r in newly:
        seen_done.add(_key(r))
        s = read_json(os.path.join(r['path'], 'summary.json'))
        if s is None:
          out.write(f'{_label(r)}: diverged (see {r["path"]}/diverged.json)\n')
        else:
          out.write(runner._run_line(_label(r), s, s.get('seconds', 0)) + '\n')  # pylint: disable=protected-access
      if newly:
        write_results(study, workdir)
        if record:
          _export_finished(newly, record)
          write_results(study, record)
      if not wait or not in_slurm:
        break
      queued = queued_jobs()
      jobs = read_jobs(workdir)
      running = sum(queued.get(jobs.get(_key(r), {}).get('job_id')) in ('RUNNING', 'COMPLETING', 'CONFIGURING')
                    for r in in_slurm)
      line = (f'study {name}: {len(seen_done)}/{len(runs)} runs done | in SLURM: {running} running, '
              f'{len(in_slurm) - running} queued')
      if line != last_line:
        out.write(line + '\n')
        out.flush()
        last_line = line
      time.sleep(opts.poll)
  except KeyboardInterrupt:
    out.write('\nstopped waiting; the jobs go on in SLURM\n')
    return {'results': write_results(study, workdir), 'preempted': False, 'ran': len(seen_done) - len(done_before),
            'skipped': len(done_before), 'waiting': len(in_slurm)}
  results = write_results(study, workdir)
  if record:
    write_results(study, record)
  if failed:
    raise SlurmError('\n'.join(failed))
  ran = len(seen_done) - len(done_before)
  return {'results': results, 'preempted': False, 'ran': ran, 'skipped': len(done_before),
          'waiting': 0 if wait else len(in_slurm)}
