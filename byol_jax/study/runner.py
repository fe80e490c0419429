"""The study's bookkeeping: its runs prepared (each run directory's config.json written before anything launches,
finished runs of --reuse / --record taken in), the pending ones handed to a launcher (byol_jax/study/launch.py),
and, as each ends, its outcome read from its run directory, a line printed, the results rewritten and the record
extended. One loop for every launcher; see byol_jax/study/__main__.py for the command."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

from byol_jax import collapse, rundir
from byol_jax.study import launch
from byol_jax.study.plan import StudyError, plan, select_runs
from byol_jax.study.records import export_missing, export_run, find_reusable, import_record, link_run
from byol_jax.study.results import check_figures, write_results

LOG_EVERY_S = 300  # progress lines in a log (not a terminal): one per started or finished run and one every 5 min
POLL_S = 2.0


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


class Progress:
  """One line for the whole study: runs done / total, the runs training now and their steps, the ETA.

  On a terminal the line is redrawn in place every 2 s; in a log it is printed when a run starts or ends and every
  LOG_EVERY_S. ETA = the steps left of the pending runs / the steps per second measured in this invocation over
  every run (compilation, evaluations and start-up included). `started_at(run)`, where the launcher has it, says
  when a handed-over run really started (None: it waits for a free process, as --batch_runs' groups do)."""

  def __init__(self, name: str, total: int, done: int, pending: list, out=None, started_at=None):
    self.name, self.total, self.done = name, total, done
    self.out = out or sys.stdout
    self.tty = hasattr(self.out, 'isatty') and self.out.isatty()
    self.pending = list(pending)
    self.running = {}  # key -> (run, start time)
    self.started_at = started_at
    self.lock = threading.Lock()
    self.t0 = time.time()
    self.steps_at_start = self._steps()
    self.shown, self.shown_at = '', 0.0
    self._stop = threading.Event()
    self._thread = None
    if self.tty:  # the in-process launcher blocks the loop for a whole run: the line moves on its own
      self._thread = threading.Thread(target=self._loop, daemon=True)
      self._thread.start()

  def _loop(self):
    while not self._stop.wait(POLL_S):
      self.draw()

  def _steps(self) -> int:
    return sum(min(rundir.last_step(r.path), r.steps) for r in self.pending)

  def line(self) -> str:
    parts = [f'study {self.name}: {self.done}/{self.total} runs done']
    now = time.time()
    running = [(r, t) for r, t in ((r, self.start_time(r, t)) for r, t in self.running.values()) if t is not None]
    if running:
      shown = ', '.join(f'{r.label} step {min(rundir.last_step(r.path), r.steps)}/{r.steps} ({_duration(now - t)})'
                        for r, t in running[:4])
      parts.append(f'now {shown}' + (f' and {len(running) - 4} more' if len(running) > 4 else ''))
    steps = self._steps()
    left = sum(r.steps for r in self.pending) - steps
    if steps > self.steps_at_start and left > 0:
      rate = (now - self.t0) / (steps - self.steps_at_start)
      parts.append(f'{rate * max(1, len(running)):.2f} s/step')
      parts.append(f'ETA {_duration(rate * left)}')
    elif running and left > 0:
      parts.append('ETA after the first steps')
    return ' | '.join(parts)

  def draw(self, final=False, force=False):
    with self.lock:
      line = self.line()
      if self.tty:
        self.out.write('\r' + line + '\033[K' + ('\n' if final else ''))
      elif (force or final) and line != self.shown or time.time() - self.shown_at >= LOG_EVERY_S:
        self.out.write(line + '\n')
        self.shown, self.shown_at = line, time.time()
      self.out.flush()

  def message(self, text):
    with self.lock:
      self.out.write(('\r\033[K' if self.tty else '') + text + '\n')
      self.out.flush()
    if self.tty:
      self.draw()

  def start(self, run):
    self.running[run.key] = (run, time.time())
    self.draw(force=True)

  def start_time(self, run, handed_over: float):
    """When the run started training: the launcher's word where it has one, else when it was handed over."""
    return self.started_at(run) if self.started_at is not None else handed_over

  def end(self, run, finished: bool):
    self.running.pop(run.key, None)
    if finished:
      self.done += 1
      self.draw(force=True)

  def close(self):
    self._stop.set()
    if self._thread:
      self._thread.join()
    self.draw(final=True)


def run_line(label: str, s: dict, seconds: float) -> str:
  """What a study prints of a finished run."""
  verdict = collapse.collapse_verdict(s)[1]
  init = s.get('initial_linear_probe_top1')
  init = f' (step 0: {init:.3f})' if init is not None else ''
  if s['final_linear_probe_top1'] is None:  # unlabelled data (image_folder without class folders): no probes
    return f'{label}: no probes (unlabelled data); {verdict} ({_duration(seconds)})'
  return (f'{label}: linear probe {s["final_linear_probe_top1"]:.4f}{init}, kNN {s["final_knn_top1"]:.4f}; '
          f'{verdict} ({_duration(seconds)})')


def prepare(study, workdir: str, rows_flag: str = '', reuse_dirs=(), only=None, record='', num_devices=None):
  """The selected runs (plan), checked against what their folders hold, finished ones of --record copied in and
  of --reuse linked (a linked run is also copied into the record), and the config.json of every pending run
  written. only: the [(row, seed)] to keep, in that order (--runs). Returns (runs, linked + copied).
  Raises StudyError, before anything is written, for a bad study config or a folder holding another run."""
  if num_devices is None:
    import jax
    num_devices = study.base.train.num_devices or jax.device_count()
  runs = plan(study, workdir, rows_flag, num_devices)
  if only is not None:
    runs = select_runs(runs, only)
  check_figures(study)
  for r in runs:
    try:
      rundir.check_same_run(r.path, r.config)
    except rundir.RunDirError as e:
      raise StudyError(str(e)) from None
  linked = 0
  for r in runs:
    if reuse_dirs and not os.path.lexists(r.path):
      source = find_reusable(r.config, reuse_dirs)
      if source is not None:
        link_run(r.path, source)
        linked += 1
  if record:
    linked += import_record(runs, record)
    # A run linked from another study is this study's too: the record holds it, so that it stands alone on a
    # fresh checkout (where the other study's folder may not exist) and its results count it.
    export_missing([r for r in runs if os.path.islink(r.path)], record)
  for r in runs:  # the contract: a launcher needs nothing but the run directory (one in training is left alone)
    if not rundir.finished(r.path) and rundir.busy(r.path) is None:
      rundir.write_config(r.path, r.config)
  return runs, linked


def run_study(study, workdir: str, launcher=None, rows_flag: str = '', reuse_dirs=(), only=None, record='',
              wait: bool = True, out=None, num_devices=None) -> dict:
  """Trains the study's pending runs with `launcher` (default: launch.InProcess()), keeping the books from the run
  directories. Returns {'results', 'preempted', 'ran', 'skipped', 'failed': [one line per failed run],
  'waiting': runs still training elsewhere when not waiting (SLURM --no_wait)}.

  SIGTERM is passed on to the launcher (each run saves its checkpoint and stops) and no run is started after it;
  Ctrl-C too (a second one stops at once). A detached launcher's runs (SLURM) go on: the study stops waiting.
  Raises StudyError (before any run) for a bad study config or a run folder of another config."""
  launcher = launcher or launch.InProcess()
  out = out or sys.stdout
  runs, linked = prepare(study, workdir, rows_flag, reuse_dirs, only, record, num_devices)
  finished = [r for r in runs if rundir.finished(r.path)]
  pending = [r for r in runs if not rundir.finished(r.path)]
  name = study.get('name', '') or 'study'
  taken = f' ({linked} from --reuse / --record)' if linked else ''
  if not pending:
    out.write(f'study {name}: all {len(runs)} runs already finished in {workdir}{taken}\n')
    out.flush()
    return _end(study, workdir, record, preempted=False, ran=0, skipped=len(runs), failed=[], waiting=0)
  progress = Progress(name, len(runs), len(finished), pending, out, getattr(launcher, 'started_at', None))
  if finished:
    progress.message(f'{len(finished)} of {len(runs)} runs already finished in {workdir}: skipped{taken}')
  stop = {}

  def on_sigterm(signum, frame):
    del frame
    stop['signal'] = signum
    launcher.forward(signum)

  def on_ctrl_c(signum, frame):
    del frame
    if stop.get('signal') == signal.SIGINT:  # the second Ctrl-C: at once (the runs got it from the terminal too)
      raise KeyboardInterrupt
    stop['signal'] = signum
    # SIGTERM, not SIGINT: a run that got this Ctrl-C from the terminal as well would take a second SIGINT as the
    # second Ctrl-C and stop without saving.
    launcher.forward(signal.SIGTERM)

  previous = signal.signal(signal.SIGTERM, on_sigterm)
  previous_int = None if launcher.detached else signal.signal(signal.SIGINT, on_ctrl_c)
  queue, running, failed, ran, preempted = list(pending), {}, [], 0, False
  # Runs another process trains (a second study on this workdir): left to it, and collected when they finish. A
  # detached launcher's jobs take the run's lock themselves, where they run.
  elsewhere, locking = {}, not launcher.detached
  try:
    while queue or running or elsewhere:
      while queue and not stop and (launcher.slots is None or len(running) < launcher.slots):
        r = queue.pop(0)
        if locking and not rundir.try_lock(r.path):
          elsewhere[r.key] = r
          progress.message(f'{r.label}: {rundir.holder(r.path)} is training it; left to it')
          continue
        if locking and rundir.finished(r.path):  # finished by another process since this study looked
          rundir.unlock(r.path)
          elsewhere[r.key] = r
          continue
        running[r.key] = (r, time.time())
        progress.start(r)
        launcher.start(r)
      for key, r in list(elsewhere.items()):
        if rundir.finished(r.path):
          del elsewhere[key]
          progress.end(r, finished=True)
          progress.message(f'{r.label}: finished by another process')
          write_results(study, workdir)
        elif rundir.busy(r.path) is None:  # its process stopped before the end: this study resumes it
          queue.append(elsewhere.pop(key))
      if stop and not running:
        preempted = preempted or not launcher.detached
        break
      if not running:
        time.sleep(POLL_S if elsewhere and not queue else 0)
        continue
      if not wait and launcher.detached:
        ended = launcher.wait(0)
      else:
        ended = launcher.wait(POLL_S)
      for r, code in ended:
        _, handed_over = running.pop(r.key)
        started = progress.start_time(r, handed_over) or handed_over
        if locking:
          rundir.unlock(r.path)
        status = r.status()
        if status == 'done':
          ran += 1
          progress.message(run_line(r.label, rundir.read_summary(r.path), time.time() - started))
          write_results(study, workdir)
          if record:
            export_run(r, record)
            write_results(study, record)
        elif status == 'diverged':
          ran += 1
          progress.message(f'{r.label}: diverged: {(rundir.read_diverged(r.path) or {}).get("message", "")}')
          write_results(study, workdir)
        elif stop or code in (0, 130):  # stopped by SIGTERM or Ctrl-C after saving its checkpoint: no run starts
          stop.setdefault('signal', signal.SIGTERM)
          preempted = True
          progress.message(f'{r.label}: stopped at step {rundir.last_step(r.path)}; the same command resumes it')
        elif launcher.retry(r):
          queue.insert(0, r)
        else:
          failed.append(launcher.failure(r, code))
          progress.message(failed[-1])
        progress.end(r, finished=status in ('done', 'diverged'))
      if stop and (not running or launcher.detached):  # a detached launcher's runs go on: stop waiting for them
        preempted = not launcher.detached
        break
      if not wait and launcher.detached and not queue:
        break
      if not progress.tty:
        progress.draw()
  except KeyboardInterrupt:
    if not launcher.detached:
      raise
    progress.message('stopped waiting; the runs go on in SLURM')
  finally:
    for r, _ in running.values():
      if locking:
        rundir.unlock(r.path)
    signal.signal(signal.SIGTERM, previous)
    if previous_int is not None:
      signal.signal(signal.SIGINT, previous_int)
    progress.close()
  return _end(study, workdir, record, preempted=preempted, ran=ran, skipped=len(finished), failed=failed,
              waiting=len(running))


def _end(study, workdir, record, **outcome) -> dict:
  results = write_results(study, workdir)
  if record:
    write_results(study, record)
  return {'results': results, **outcome}
