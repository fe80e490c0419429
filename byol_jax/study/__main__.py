"""Studies: many ordinary runs from one config, and one table of their results.

  python -m byol_jax.study --config=configs/study/<name>.py --workdir=DIR [--rows=a,b]
      [--config.seeds=1] [--config.base.train.steps=40] [--config.base.optim.lr=0.05 ...] [--reuse=DIR2,...]
      [--parallel=2] [--record=RECORD] [--runs=row:seed,...]

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

Every (row, seed k) is an ordinary run, byol_jax.train.run(config, DIR/<row>/seed<k>/), with the row's
switches applied to base and config.seed = (base seed, or the row's seed<n>) + k, so seed0 of a row is
exactly `python -m byol_jax.main` with the same config. In a study, `epochs<n>` scales base.train.steps by
n/100 (the base stands for the paper's 100 epochs). Runs go seed-major (seed 0 of every row, then seed 1,
...), so a first complete table exists after a third of a 3-seed study.

Running the same command again skips finished runs (summary.json present, config.json the same run: equal
after leaving out the execution settings, records.EXECUTION_KEYS), resumes an interrupted one from its
checkpoint, and refuses (before any run) a run folder that holds a different run. So a study resumes with or
without --parallel and on another machine. A run that diverges (NaN) is recorded (diverged.json) and counted as such.
SIGTERM stops the study after the current run has saved its checkpoint.

`--parallel=N` trains N runs at a time, each in its own process pinned to one CPU core with one JAX device
(base.train.cpu_devices=1, an execution setting). On a 2-core machine --parallel=2 gives 1.2-1.3x the
throughput of one 2-device process (docs/study.md).

`--record=RECORD` makes a study span sittings and machines: RECORD holds finished runs without checkpoints
(config, metrics, summary, plots: commit it). Runs found there are copied in instead of trained, each run that
finishes here is added to it, and its results are written there too.

`--runs=directpred:4,linear_sym:4,...` trains only those runs, in that order (with --parallel, worker i takes
every N-th from i): the seeds that matter most first, when a study spans sittings. The results cover every
finished run of the study.

`--reuse=DIR2,DIR3` links (relative symlink) a run whose config equals a finished run in another study
folder or record instead of training it again: studies share rows (table3's `linear` is predictors' `linear`).
With --record, the record gets a copy of each linked run, so it stands alone.

After each run and at the end: DIR/results.json, DIR/results.md, DIR/results.png (see `write_results`), and
for a weight decay x EMA rate grid of linear-predictor rows DIR/phase_diagram.png / .json (phase_map.py).
Means are over the finished seeds of a row; std is the sample standard deviation (ddof=1) over seeds,
null with one seed. Collapse indicators and the collapse rule: collapse.py.

`--launcher=slurm` submits the pending runs to a SLURM cluster instead, one job-array task per run, through
submitit; `--no_wait` returns once they are submitted, and the same command collects later (byol_jax/study/slurm.py
has the flags, resubmission and multi-node jobs; docs/cluster_and_own_data.md the commands).

A bad study config (an unknown switch, a row whose run config fails byol_jax.config.validate, seeds < 1, a
--rows name not in rows, a paper entry, reference or pair naming no row) stops before any run with one line
naming it, exit 2.
"""
from __future__ import annotations

import os
import sys

from byol_jax import config as config_lib
from byol_jax.study.plan import StudyError, parse_runs
from byol_jax.study.runner import run_parallel, run_study


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
    config_lib.set_cpu_devices(FLAGS.config.base)  # before JAX starts
    if FLAGS.coordinator_address:  # a process of a multi-node SLURM job (slurm.py): byol_jax.main's flags
      import jax
      jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                 num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    if FLAGS.launcher == 'slurm':
      from byol_jax.study import slurm  # submitit is imported only here
      if FLAGS.parallel > 1 or only:
        raise StudyError('--parallel and --runs are for --launcher=local; with SLURM each run is a job of its own')
      opts = slurm.Options(
          partition=FLAGS.slurm_partition, gpus=FLAGS.slurm_gpus, cpus=FLAGS.slurm_cpus, nodes=FLAGS.slurm_nodes,
          tasks_per_node=FLAGS.slurm_tasks_per_node, time=FLAGS.slurm_time, mem=FLAGS.slurm_mem,
          args=tuple(a for a in FLAGS.slurm_args if a), max_retries=FLAGS.slurm_max_retries, poll=FLAGS.slurm_poll)
      outcome = slurm.run_slurm(FLAGS.config, FLAGS.workdir, sys.argv[1:], opts, FLAGS.rows, reuse, FLAGS.record,
                                wait=not FLAGS.no_wait)
    elif FLAGS.no_wait:
      raise StudyError('--no_wait is for --launcher=slurm (a local study runs in this process)')
    elif FLAGS.parallel > 1:
      outcome = run_parallel(FLAGS.config, FLAGS.workdir, FLAGS.parallel, sys.argv, FLAGS.rows, reuse,
                             record=FLAGS.record, only=only)
    else:
      outcome = run_study(FLAGS.config, FLAGS.workdir, FLAGS.rows, reuse_dirs=reuse, only=only, record=FLAGS.record)
  except (StudyError, config_lib.ConfigError, FileNotFoundError) as e:
    print(f'error: study {name}: {e}', file=sys.stderr)
    sys.exit(2)
  if outcome.get('failed'):
    sys.exit(1)
  if outcome['preempted']:
    print(f'study stopped by SIGTERM; run the same command to resume ({FLAGS.workdir})', flush=True)
    sys.exit(0)
  if outcome.get('waiting'):
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
                       'with one JAX device (sets base.train.cpu_devices=1, part of every run\'s config).')
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
  flags.DEFINE_string('coordinator_address', None, 'Multi-host (set by --launcher=slurm for multi-node jobs): '
                      'host:port of process 0.')
  flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
