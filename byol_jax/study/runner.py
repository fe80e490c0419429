"""The study runner: the pending runs of a study, one after another or --parallel N at a time, with one
progress line; see byol_jax/study/__main__.py for the command."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time

from byol_jax.study import collapse
from byol_jax.study.plan import plan, select_runs
from byol_jax.study.records import export_run, find_reusable, import_record, link_run, run_dir, run_status
from byol_jax.study.results import write_results


# ----------------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------------
LOG_EVERY_S = 300  # progress lines in a log (not a terminal): one per finished run and one every 5 minutes


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def _last_step(path: str) -> int:
  """The step of the last whole line of path/metrics.jsonl (0 if none). Evaluation lines (spectra) run to several
  KB, so the tail read is generous and a line cut by it is skipped."""
  try:
    with open(os.path.join(path, 'metrics.jsonl'), 'rb') as f:
      f.seek(0, 2)
      f.seek(max(0, f.tell() - 65536))
      lines = f.read().decode(errors='ignore').strip().splitlines()
  except OSError:
    return 0
  for line in reversed(lines):
    try:
      return int(json.loads(line)['step'])
    except (ValueError, KeyError, TypeError):
      continue
  return 0


class Progress:
  """One line for the whole study: runs done / total, the current run and its step, time per step, ETA.

  On a terminal the line is redrawn in place every 2 s; otherwise it is printed when a run starts.
  ETA = steps left x seconds per step measured over the runs finished in this invocation (evaluations,
  compilation and start-up included)."""

  def __init__(self, name, total, done, out=None):
    self.name, self.total, self.done = name, total, done
    self.out = out or sys.stdout
    self.tty = hasattr(self.out, 'isatty') and self.out.isatty()
    self.lock = threading.Lock()
    self.current = None  # (label, path, steps)
    self.steps_left_after = 0
    self.seconds = 0.0
    self.steps_measured = 0
    self.run_start = None
    self._stop = threading.Event()
    self._thread = None
    if self.tty:
      self._thread = threading.Thread(target=self._loop, daemon=True)
      self._thread.start()

  def _loop(self):
    while not self._stop.wait(2.0):
      self.draw()

  def line(self) -> str:
    parts = [f'study {self.name}: {self.done}/{self.total} runs done']
    step_now = 0
    if self.current:
      label, path, steps = self.current
      step_now = _last_step(path)
      parts.append(f'now {label} step {step_now}/{steps} ({_duration(time.time() - self.run_start)})')
    if self.steps_measured:
      rate = self.seconds / self.steps_measured
      left = self.steps_left_after + (self.current[2] - step_now if self.current else 0)
      parts.append(f'{rate:.2f} s/step')
      parts.append(f'ETA {_duration(rate * left)}')
    elif self.current:
      parts.append('ETA after the first run')
    if not self.current and self.done >= self.total:
      parts = parts[:1]
    return ' | '.join(parts)

  def draw(self, final=False):
    with self.lock:
      if self.tty:
        self.out.write('\r' + self.line() + '\033[K' + ('\n' if final else ''))
      else:
        self.out.write(self.line() + '\n')
      self.out.flush()

  def message(self, text):
    with self.lock:
      self.out.write(('\r\033[K' if self.tty else '') + text + '\n')
      self.out.flush()
    if self.tty:
      self.draw()

  def start(self, label, path, steps, steps_left_after):
    self.current = (label, path, steps)
    self.steps_left_after = steps_left_after
    self.run_start = time.time()
    self.start_step = _last_step(path)
    self.draw()

  def finish(self, counted=True):
    if self.current and counted:
      self.seconds += time.time() - self.run_start
      self.steps_measured += max(1, self.current[2] - self.start_step)
    self.current = None
    self.done += 1

  def close(self):
    self._stop.set()
    if self._thread:
      self._thread.join()
    self.draw(final=True)


# ----------------------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------------------
def _run_line(label, s, seconds) -> str:
  verdict = collapse.collapse_verdict(s)[1]
  init = s.get('initial_linear_probe_top1')
  init = f' (step 0: {init:.3f})' if init is not None else ''
  if s['final_linear_probe_top1'] is None:  # unlabelled data (image_folder without class folders): no probes
    return f'{label}: no probes (unlabelled data); {verdict} ({_duration(seconds)})'
  return (f'{label}: linear probe {s["final_linear_probe_top1"]:.4f}{init}, kNN {s["final_knn_top1"]:.4f}; '
          f'{verdict} ({_duration(seconds)})')


def prepare(study, workdir: str, rows_flag: str = '', reuse_dirs=(), only=None, link=True, record=''):
  """The selected runs with their folder and status (plan + run_status), finished ones of --record copied in
  and of --reuse linked (when link; a linked run is also copied into the record). only: the [(row, seed)] to
  keep, in that order (--runs, or a --parallel worker's share).
  Returns (runs, linked + copied from the record)."""
  import jax
  runs = plan(study, rows_flag, study.base.train.num_devices or jax.device_count())
  if only is not None:
    runs = select_runs(runs, only)
  linked = 0
  for r in runs:
    r['path'] = run_dir(workdir, r['row'], r['seed'])
    r['status'] = run_status(r['path'], r['config'])
    if r['status'] == 'new' and reuse_dirs and not os.path.lexists(r['path']):
      source = find_reusable(r['config'], reuse_dirs)
      if source is not None:
        if link:
          link_run(r['path'], source)
        r['status'], linked = 'done', linked + 1
  if record and link:
    linked += import_record(runs, record)
    # A run linked from another study is this study's too: the record holds it, so that it stands alone on a
    # fresh checkout (where the other study's folder may not exist) and its results count it.
    for r in runs:
      held = os.path.join(run_dir(record, r['row'], r['seed']), 'summary.json')
      if r['status'] == 'done' and os.path.islink(r['path']) and not os.path.exists(held):
        export_run(r['path'], record, r['row'], r['seed'])
  return runs, linked


def run_study(study, workdir: str, rows_flag: str = '', out=None, reuse_dirs=(), only=None, record='') -> dict:
  """Runs the study's pending runs; returns {'results', 'preempted', 'ran', 'skipped'}.

  Raises StudyError (before any run) for a bad study config or a run folder of another config."""
  import jax
  from byol_jax import train
  out = out or sys.stdout
  main_process = jax.process_index() == 0
  runs, linked = prepare(study, workdir, rows_flag, reuse_dirs, only, link=main_process, record=record)
  finished = [r for r in runs if r['status'] in ('done', 'diverged')]
  pending = [r for r in runs if r['status'] not in ('done', 'diverged')]
  name = study.get('name', '') or 'study'
  progress = Progress(name, len(runs), len(finished), out=out if main_process else open(os.devnull, 'w'))
  if finished:
    progress.message(f'{len(finished)} of {len(runs)} runs already finished in {workdir}: skipped'
                     + (f' ({linked} from --reuse / --record)' if linked else ''))
  stop = {'signal': None}
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
  ran, preempted = [], False
  try:
    for i, r in enumerate(pending):
      if stop['signal'] is not None:
        preempted = True
        break
      label = f'{r["row"]}/seed{r["seed"]}'
      steps_after = sum(x['config'].train.steps for x in pending[i + 1:])
      progress.start(label, r['path'], r['config'].train.steps, steps_after)
      t0 = time.time()
      os.makedirs(r['path'], exist_ok=True)
      try:
        with open(os.path.join(r['path'], 'log.txt'), 'a') as log, contextlib.redirect_stdout(log):
          summary = train.run(r['config'], r['path'])
      except train.TrainingDiverged as e:
        if main_process:
          with open(os.path.join(r['path'], 'diverged.json'), 'w') as f:
            json.dump({'message': str(e)}, f, indent=2)
        progress.finish()
        progress.message(f'{label}: diverged: {e}')
        ran.append(r)
        continue
      if summary.get('preempted'):
        progress.message(f'{label}: stopped by SIGTERM at step {summary["step"]}; the same command resumes it')
        preempted = True
        break
      progress.finish()
      progress.message(_run_line(label, summary, time.time() - t0))
      ran.append(r)
      if main_process:
        write_results(study, workdir)
        if record:
          export_run(r['path'], record, r['row'], r['seed'])
          write_results(study, record)
  finally:
    signal.signal(signal.SIGTERM, previous)
    progress.close()
  results = write_results(study, workdir) if main_process else None
  if main_process and record:
    write_results(study, record)
  return {'results': results, 'preempted': preempted, 'ran': len(ran), 'skipped': len(finished)}


# ----------------------------------------------------------------------------------------------------
# --parallel: several runs at a time, one process per CPU core
# ----------------------------------------------------------------------------------------------------
OWN_FLAGS = ('--parallel', '--rows', '--reuse', '--runs')


def forwarded_args(argv: list[str]) -> list[str]:
  """The command line without the flags the parent consumes (both --flag=value and --flag value forms)."""
  out, skip = [], False
  for a in argv:
    if skip:
      skip = False
    elif a in OWN_FLAGS:
      skip = True
    elif not a.startswith(tuple(f + '=' for f in OWN_FLAGS)):
      out.append(a)
  return out


def run_parallel(study, workdir: str, n: int, argv: list[str], rows_flag: str = '', reuse_dirs=(),
                 out=None, record='', only=None) -> dict:
  """Trains the pending runs n at a time: n worker processes (`python -m byol_jax.study ... --runs=...`), worker
  i pinned to CPU core i with one JAX device (study.base.train.cpu_devices must already be 1), each given every
  n-th pending run in plan order (or in the order of only, --runs's [(row, seed)]). Their output goes to
  DIR/.worker<i>.log; this process draws one progress line and writes the results when all have ended. SIGTERM
  is passed on (each worker stops after its run's checkpoint). Returns run_study's dict."""
  import subprocess
  out = out or sys.stdout
  runs, linked = prepare(study, workdir, rows_flag, reuse_dirs, only, record=record)
  pending = [r for r in runs if r['status'] not in ('done', 'diverged')]
  name = study.get('name', '') or 'study'
  if not pending:
    out.write(f'study {name}: all {len(runs)} runs already finished in {workdir}\n')
    if record:
      write_results(study, record)
    return {'results': write_results(study, workdir), 'preempted': False, 'ran': 0, 'skipped': len(runs)}
  n = min(n, len(pending))
  cores = sorted(os.sched_getaffinity(0))
  os.makedirs(workdir, exist_ok=True)
  base_cmd = [sys.executable, '-m', 'byol_jax.study'] + forwarded_args(argv[1:])
  workers = []
  for i in range(n):
    share = pending[i::n]
    cmd = base_cmd + ['--config.base.train.cpu_devices=1', '--parallel=1',
                      '--runs=' + ','.join(f'{r["row"]}:{r["seed"]}' for r in share)]
    log = open(os.path.join(workdir, f'.worker{i}.log'), 'w')
    worker = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    # Pinned from here, not by preexec_fn (unsafe with JAX's threads in this process): the worker's own threads
    # start a second later, after its imports, and inherit the pinning.
    os.sched_setaffinity(worker.pid, {cores[i % len(cores)]})
    workers.append((worker, log, share))
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: [w.send_signal(signum) for w, _, _ in workers])
  t0, total, done_before = time.time(), len(runs), len(runs) - len(pending)
  out.write(f'study {name}: {len(pending)} runs in {n} processes (one per core), {done_before} of {total} already '
            f'finished{f" ({linked} from --reuse / --record)" if linked else ""}; logs: {workdir}/.worker<i>.log\n')
  # Progress in steps of the pending runs (the workers' metrics.jsonl), so the ETA moves within a run.
  total_steps = sum(r['config'].train.steps for r in pending)

  def steps_done():
    return sum(min(_last_step(r['path']), r['config'].train.steps) for r in pending)

  steps_at_start = steps_done()
  tty, shown, shown_at = out.isatty(), -1, t0
  try:
    while any(w.poll() is None for w, _, _ in workers):
      time.sleep(2.0)
      finished = sum(os.path.exists(os.path.join(r['path'], 'summary.json')) for r in pending)
      steps, now = steps_done(), time.time()
      eta = (f' | ETA {_duration((now - t0) / (steps - steps_at_start) * (total_steps - steps))}'
             if steps > steps_at_start else '')
      line = (f'study {name}: {done_before + finished}/{total} runs done | step {steps}/{total_steps} of the '
              f'{len(pending)} pending | {n} processes{eta}')
      if tty or finished != shown or now - shown_at >= LOG_EVERY_S:  # a log: a line per finished run, and timed
        out.write('\r' + line + '\033[K' if tty else line + '\n')
        out.flush()
        shown, shown_at = finished, now
  finally:
    signal.signal(signal.SIGTERM, previous)
    for _, log, _ in workers:
      log.close()
  if tty:
    out.write('\n')
  failed = [(i, w.returncode) for i, (w, _, _) in enumerate(workers) if w.returncode]
  for i, code in failed:
    out.write(f'worker {i} exited with status {code}: see {os.path.join(workdir, f".worker{i}.log")}\n')
  ran = sum(os.path.exists(os.path.join(r['path'], 'summary.json')) for r in pending)
  results = write_results(study, workdir)
  if record:
    write_results(study, record)
  return {'results': results, 'preempted': ran < len(pending) and not failed, 'ran': ran,
          'skipped': done_before, 'failed': len(failed)}
