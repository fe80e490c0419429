"""Moved to byol_jax/collapse.py (a run measures its own collapse indicators); kept so that existing imports
(notebooks, your scripts) go on working."""
from byol_jax.collapse import *  # noqa: F401,F403
from byol_jax.collapse import KEYS, RANDOM_Z_SPREAD, RANK_EPS, Z_RANK_THRESHOLD, Z_STD_THRESHOLD  # noqa: F401
