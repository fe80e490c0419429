"""Command line: python -m byol_jax.main --config=configs/<name>.py --workdir=<dir> [--config.a.b=v ...]

With no --config it runs configs/fashion_mnist.py (BYOL, small ResNet, Fashion-MNIST, CPU-sized);
--config=configs/run.py:DIR runs the config a run directory holds (its config.json), as a study's launchers do.
Multi-host: on TPU pods and SLURM jax.distributed finds its peers from the environment; elsewhere pass
--coordinator_address, --num_processes and --process_id.
"""
from __future__ import annotations

import os
import signal
import sys

from absl import app, flags, logging

from byol_jax import cli

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
                              'fashion_mnist.py')

cli.define_config_file(DEFAULT_CONFIG, 'Config file (ml_collections).')
flags.DEFINE_string('workdir', 'runs/default', 'Where checkpoints, metrics and plots go; reused to resume.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
flags.DEFINE_bool('distributed', None, 'Call jax.distributed.initialize() (default: auto-detect a cluster).')

FLAGS = flags.FLAGS


def _in_cluster() -> bool:
  env = os.environ
  return bool(FLAGS.coordinator_address or 'TPU_WORKER_HOSTNAMES' in env and ',' in env['TPU_WORKER_HOSTNAMES']
              or int(env.get('SLURM_NTASKS', '1')) > 1 or 'OMPI_COMM_WORLD_SIZE' in env)


def main(argv):
  del argv
  if not FLAGS['verbosity'].present:  # orbax and jax log every checkpoint at INFO; keep the terminal readable
    logging.set_verbosity(logging.WARNING)
  import jax
  from byol_jax import config as config_lib, rundir, train
  try:
    config_lib.set_cpu_devices(FLAGS.config)  # before JAX starts
    distributed = FLAGS.distributed if FLAGS.distributed is not None else _in_cluster()
    if distributed:
      jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                 num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    summary = train.run(FLAGS.config, FLAGS.workdir)
  except (config_lib.ConfigError, rundir.RunDirError, FileNotFoundError, train.TrainingDiverged) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:  # Ctrl-C while starting up, or during the final evaluation (which then finished)
    print('stopped by Ctrl-C; run the same command to resume', file=sys.stderr)
    sys.exit(130)
  if summary.get('preempted'):
    sys.exit(130 if summary.get('signal') == signal.SIGINT else 0)  # the shell's status for Ctrl-C


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
