"""The config of an existing run directory, read from its config.json: `--config=configs/run.py:DIR` trains,
resumes or re-evaluates exactly that run (`python -m byol_jax.main --config=configs/run.py:DIR --workdir=DIR`).

This is how a study launches its runs: it writes each run's config.json first, then runs byol_jax.main on the
folder. Keys the config schema gained after the run was made read as LEGACY_VALUES (byol_jax/rundir.py), so an old
run stays the run it was; overrides (`--config.train.log_every=10`) apply on top, and an override of a key that
changes what is trained is refused on restart (the identity check of byol_jax.train).
"""
from byol_jax import rundir


def get_config(workdir=''):
  if not workdir:
    raise ValueError('configs/run.py needs the run directory: --config=configs/run.py:DIR')
  return rundir.load_config(workdir)
