"""Studies: many runs from one config and one table of their results (`python -m byol_jax.study`), with the
collapse indicators, the real network's phase map and its spectra beside the theory."""
