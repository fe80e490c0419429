"""Moved to byol_jax/real_vs_theory.py (a run measures its spectra beside the theory itself); kept so that existing
imports (notebooks/06_real_vs_theory.ipynb, tests, your scripts) go on working."""
from byol_jax.real_vs_theory import *  # noqa: F401,F403
from byol_jax.real_vs_theory import FILENAME, FLOOR, SPECTRA_KEYS, TOP_K, Spectra  # noqa: F401
