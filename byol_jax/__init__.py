"""BYOL and SimSiam in JAX/Flax, with the predictor ablations and DirectPred of Tian, Chen & Ganguli (ICML 2021)."""
