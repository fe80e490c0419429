# The two commands of a fresh machine (README's first screen). Both install what is missing first: Debian's
# Fashion-MNIST and g++ where apt-get is, a .venv with requirements.txt and byol_jax itself (`pip install -e .`);
# .ci/run holds those steps, so CI and these targets install the same things.
#   make run     train the default config (configs/fashion_mnist.py) into runs/fmnist; run again to resume
#   make test    the whole suite as CI runs it (also starts a one-node SLURM: needs root, Debian)
.PHONY: run test

WORKDIR ?= runs/fmnist

# Set up again only when what it installs from changed (a second `make run` resumes at once).
.venv/.installed: requirements.txt pyproject.toml .ci/run
	bash .ci/run setup
	touch $@

run: .venv/.installed
	.venv/bin/python -m byol_jax.main --workdir=$(WORKDIR)

test:
	bash .ci/run
