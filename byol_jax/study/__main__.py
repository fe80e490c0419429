"""Studies: many ordinary runs from one config, and one table of their results.

  python -m byol_jax.study --config=configs/study/<name>.py --workdir=DIR [--rows=a,b]
      [--config.seeds=1] [--config.base.train.steps=40] [--config.base.optim.lr=0.05 ...] [--reuse=DIR2,...]
      [--parallel=2] [--batch_runs=K] [--record=RECORD] [--runs=row:seed,...]

A study config (configs/study/*.py) holds
  name   the study's name (for the tables);
  base   an ordinary run config (byol_jax.config.base_config() and changes);
  rows   row name -> its changes to base, as the comma-separated switches of configs/stl10.py's ARGS
         ('linear_sym,no_ema', 'rho0.5,eps0'), in table order (the order the config file writes them);
  seeds  runs per row (>= 1);
  paper  row name -> {'value': the paper's number, 'table': where it is}, for the rows the paper reports;
  reference, pairs  (optional) the row every other row is compared with seed by seed, and more 'row-other'
         comparisons: results give the paired difference of the linear probe (mean, sample std, 95%
         t-interval, n) and its verdict (results.py).

Every (row, seed k) is an ordinary run in its own run directory DIR/<row>/seed<k>/ (byol_jax/rundir.py), with the
row's switches applied to base and config.seed = (base seed, or the row's seed<n>) + k, so seed0 of a row is
exactly `python -m byol_jax.main` with the same config. In a study, `epochs<n>` scales base.train.steps by
n/100 (the base stands for the paper's 100 epochs). Runs go seed-major (seed 0 of every row, then seed 1,
...), so a first complete table exists after a third of a 3-seed study.

Before anything trains, the study writes every pending run's config.json; a launcher then runs `python -m
byol_jax.main --config=configs/run.py:DIR/<row>/seed<k> --workdir=DIR/<row>/seed<k>` on each (byol_jax/study/
launch.py): in this process (the default), `--parallel=N` processes at a time, or SLURM jobs (`--launcher=slurm`).
Whatever the launcher, the study reads each run's outcome from its run directory, prints a line, rewrites the
results and extends the record (runner.run_study).

Running the same command again skips finished runs (summary.json present, config.json the same run: equal
after leaving out the execution settings, rundir.EXECUTION_KEYS), resumes an interrupted one from its
checkpoint, and refuses (before any run) a run folder that holds a different run. So a study resumes with or
without --parallel and on another machine. A run that diverges (NaN) is recorded (diverged.json) and counted as
such. SIGTERM stops the study after the current runs have saved their checkpoints.

`--parallel=N` trains N runs at a time, each in its own process pinned to one CPU core with one JAX device
(base.train.cpu_devices=1, an execution setting); each run's output goes to its DIR/<row>/seed<k>/log.txt. On a
2-core machine --parallel=2 gives 1.2-1.3x the throughput of one 2-device process (docs/study.md "Sizing").

`--batch_runs=K` trains the pending runs in groups of up to K runs, each group one process (`python -m
byol_jax.main_batched DIR...`) that trains its runs as one compiled program (byol_jax/train_batched.py), on the
devices it has; with --parallel=N, N such processes at a time. A group holds runs that differ only in the seed and
the continuous hyperparameters (byol_jax/batched.py BATCHABLE_KEYS) and start from the same step, in the study's
order; any other run trains alone. Each run directory ends as if the run had trained alone (batching is an
execution choice: the run's identity does not change). On a GPU a small network leaves the chip idle and runs
together cost less (per-run speed-up 3.9x at K=16 on an H100, docs/study.md); on CPU they are slower (the study
says so once). Not with --launcher=slurm.

`--record=RECORD` makes a study span sittings and machines: RECORD holds finished runs without checkpoints
(config, metrics, summary, plots: commit it). Runs found there are copied in instead of trained, each run that
finishes here is added to it, and its results are written there too.

`--runs=directpred:4,linear_sym:4,...` trains only those runs, in that order: the seeds that matter most first,
when a study spans sittings. The results cover every finished run of the study.

`--reuse=DIR2,DIR3` links (relative symlink) a run whose config equals a finished run in another study
folder or record instead of training it again: studies share rows (table3's `linear` is predictors' `linear`).
With --record, the record gets a copy of each linked run, so it stands alone.

After each run and at the end: DIR/results.json, DIR/results.md, DIR/results.png (results.py), and the figures
the study config names (`figures`: phase_diagram.png / .json for a weight decay x EMA rate grid, phase_map.py;
lr_sweep.png / .json for an lr sweep, lr_sweep.py). Means are over the finished seeds of a row; std is the sample
standard deviation (ddof=1) over seeds, null with one seed (stats.py). Collapse indicators and the collapse rule:
byol_jax/collapse.py.

`--launcher=slurm` submits the pending runs to a SLURM cluster instead, one job per run, through submitit;
`--no_wait` returns once they are submitted, and the same command collects later (byol_jax/study/slurm.py has the
flags, resubmission and multi-node jobs; docs/cluster_and_own_data.md the commands).

A bad study config (an unknown switch, a row whose run config fails byol_jax.config.validate, seeds < 1, a
--rows name not in rows, a paper entry, reference or pair naming no row, a figure its rows cannot draw) stops
before any run with one line naming it, exit 2; so does a run that failed (one line each, with its log).
"""
from __future__ import annotations

import os
import sys

from byol_jax import config as config_lib, rundir
from byol_jax.study import launch
from byol_jax.study.plan import StudyError, parse_runs
from byol_jax.study.runner import run_study


def make_launcher(FLAGS, name: str):
  """The launcher the flags ask for (byol_jax/study/launch.py's interface)."""
  if FLAGS.batch_runs < 1:
    raise StudyError(f'--batch_runs={FLAGS.batch_runs}: give the runs per group, 1 or more (1: each run alone)')
  if FLAGS.launcher == 'slurm':
    if FLAGS.batch_runs > 1:
      raise StudyError('--batch_runs is for --launcher=local; with SLURM each run is a job of its own (leave out '
                       '--batch_runs)')
    from byol_jax.study import slurm  # submitit is imported only here
    if FLAGS.parallel > 1:
      raise StudyError('--parallel is for --launcher=local; with SLURM each run is a job of its own')
    opts = slurm.Options(
        partition=FLAGS.slurm_partition, gpus=FLAGS.slurm_gpus, cpus=FLAGS.slurm_cpus, nodes=FLAGS.slurm_nodes,
        tasks_per_node=FLAGS.slurm_tasks_per_node, time=FLAGS.slurm_time, mem=FLAGS.slurm_mem,
        args=tuple(a for a in FLAGS.slurm_args if a), max_retries=FLAGS.slurm_max_retries, poll=FLAGS.slurm_poll)
    return slurm.Slurm(FLAGS.workdir, opts, name)
  if FLAGS.no_wait:
    raise StudyError('--no_wait is for --launcher=slurm (a local study runs in this process)')
  if FLAGS.batch_runs > 1:
    import jax
    cpu = jax.default_backend() == 'cpu'
    if cpu:
      from byol_jax import train_batched
      print(f'study {name}: {train_batched.CPU_NOTE}', flush=True)
    return launch.LocalGroups(max(1, FLAGS.parallel), FLAGS.batch_runs, FLAGS.workdir, pin=cpu)
  return launch.LocalProcesses(FLAGS.parallel) if FLAGS.parallel > 1 else launch.InProcess()


def main(argv):
  del argv
  from absl import flags, logging
  FLAGS = flags.FLAGS
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from ml_collections import config_flags
  name = os.path.basename(config_flags.get_config_filename(FLAGS['config']))
  try:
    reuse = [d for d in FLAGS.reuse if d]
    only = parse_runs(FLAGS.runs) if FLAGS.runs else None
    if FLAGS.parallel > 1:  # one JAX device per process: the runs' configs say so (repeat --parallel to resume)
      FLAGS.config.base.train.cpu_devices = 1
    config_lib.set_cpu_devices(FLAGS.config.base)  # before JAX starts (the in-process launcher trains here)
    launcher = make_launcher(FLAGS, FLAGS.config.get('name', '') or 'study')
    outcome = run_study(FLAGS.config, FLAGS.workdir, launcher, FLAGS.rows, reuse_dirs=reuse, only=only,
                        record=FLAGS.record, wait=not FLAGS.no_wait)
    if outcome['failed']:
      raise StudyError('\n'.join(outcome['failed']))
  except (StudyError, config_lib.ConfigError, rundir.RunDirError, FileNotFoundError) as e:
    for line in str(e).splitlines():
      print(f'error: study {name}: {line}', file=sys.stderr)
    sys.exit(2)
  if outcome['preempted']:
    print(f'study stopped (SIGTERM or Ctrl-C); run the same command to resume ({FLAGS.workdir})', flush=True)
    sys.exit(0)
  if outcome['waiting']:
    print(f'{outcome["waiting"]} runs in SLURM; run the same command again to collect them ({FLAGS.workdir})',
          flush=True)
    return
  print(f'results: {os.path.join(FLAGS.workdir, "results.md")} (and results.json, results.png)', flush=True)


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Study config (configs/study/*.py).', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Study folder: one run folder per (row, seed), and the results.')
  flags.DEFINE_string('rows', '', 'Comma-separated row names to run (default: all).')
  flags.DEFINE_list('reuse', [], 'Other study folders: a finished run there with exactly the config of one of '
                    'this study\'s runs is linked (symlink) instead of trained again.')
  flags.DEFINE_integer('parallel', 1, 'Runs trained at a time, each in its own process pinned to one CPU core '
                       'with one JAX device (sets base.train.cpu_devices=1, an execution setting of every run).')
  flags.DEFINE_integer('batch_runs', 1, 'Runs trained together as one compiled program, per process (a GPU: a '
                       'small network leaves it idle; per run 3.9x faster at 16 on an H100; on CPU slower). Runs that '
                       'differ in more than the seed and continuous hyperparameters train alone. Not with '
                       '--launcher=slurm.')
  flags.DEFINE_list('runs', [], 'Only these row:seed runs, in this order (e.g. directpred:4,linear_sym:4): the '
                    'seeds to add first when a study cannot finish in one sitting.')
  flags.DEFINE_string('record', '', 'A study record (finished runs without checkpoints, e.g. committed to git): '
                      'its runs are copied in instead of trained, and each run finished here is added to it.')
  flags.DEFINE_enum('launcher', 'local', ['local', 'slurm'], 'local: runs here (one after another, or '
                    '--parallel); slurm: each pending run is a task of a SLURM job array (byol_jax/study/slurm.py).')
  flags.DEFINE_bool('no_wait', False, 'slurm: return once the jobs are submitted; the same command collects later.')
  flags.DEFINE_string('slurm_partition', '', 'slurm: partition (default: the cluster\'s default partition).')
  flags.DEFINE_integer('slurm_gpus', 0, 'slurm: GPUs per node of each job.')
  flags.DEFINE_integer('slurm_cpus', 0, 'slurm: CPUs per task (0: SLURM\'s default).')
  flags.DEFINE_integer('slurm_nodes', 1, 'slurm: nodes per job (> 1: one multi-host run over them).')
  flags.DEFINE_integer('slurm_tasks_per_node', 1, 'slurm: processes per node (1: one process sees every GPU).')
  flags.DEFINE_integer('slurm_time', 240, 'slurm: time limit of a job in minutes (a run past it is requeued and '
                       'resumes from its checkpoint).')
  flags.DEFINE_string('slurm_mem', '', 'slurm: memory per node, e.g. 32G (default: SLURM\'s).')
  flags.DEFINE_list('slurm_args', [], 'slurm: more sbatch options as key=value or key, e.g. qos=high,account=lab.')
  flags.DEFINE_integer('slurm_max_retries', 3, 'slurm: times a run whose job ended unfinished (preempted, '
                       'cancelled, failed, timed out) is submitted again.')
  flags.DEFINE_float('slurm_poll', 15.0, 'slurm: seconds between looks at the queue while waiting.')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
