"""BYOL on Fashion-MNIST with a small ResNet: the CPU default.

Command:  python -m byol_jax.main --config=configs/fashion_mnist.py --workdir=runs/fmnist
Hardware: 2 CPU cores (also runs unchanged on one GPU).
Time:     see README.md "Configs" (measured), evaluation at step 0 and at the end included.
Result:   see README.md: final linear probe top-1 on the test split, and the same probe at step 0.
Network:  as the paper's reference code: the projector's and the predictor's output layers have a bias, and every
          BatchNorm scale starts at 1 (BYOL's ImageNet network: neither; configs/imagenet.py).
DirectPred variant: --config.predictor.kind=directpred
"""
from byol_jax.config import base_config


def get_config():
  c = base_config()
  c.method = 'byol'
  c.train.steps = 3000          # 6.4 epochs: what 2 CPU cores train in ~11 minutes (~610 images/s, augmentation included)
  c.train.batch_size = 128
  c.train.checkpoint_every = 200
  c.train.log_every = 25
  c.train.spectra_every = 50
  c.data.name = 'fashion_mnist'
  c.data.image_size = 28
  c.data.augment_preset = 'fashion_mnist'
  c.model.backbone = 'resnet_tiny'
  c.model.width = 32            # 256-d features
  c.model.stem = 'cifar_stride2'  # 14x14 after the stem: 4x cheaper than the stride-1 CIFAR stem
  c.model.projector_hidden = 512
  c.model.projector_dim = 128
  c.predictor.kind = 'mlp'
  c.predictor.hidden = 512
  c.optim.name = 'sgd'
  c.optim.lr = 0.1               # with the cosine decay: +0.3-0.4 probe points over a constant 0.05 (docs/benchmarks.md)
  c.optim.schedule = 'warmup_cosine'
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 4e-4
  c.ema.tau_base = 0.99
  c.ema.schedule = 'cosine'
  c.eval.probe_solver = 'lbfgs'  # converged logistic regression, sklearn's C = 0.1 (the default)
  c.eval.probe_c = 0.1
  # The Adam probe the README's Fashion-MNIST results were measured with (--config.eval.probe_solver=adam): it
  # stops ~0.3-0.7 points short of the converged logistic regression on the same features.
  c.eval.probe_epochs = 30
  c.eval.probe_batch_size = 256
  c.eval.probe_lr = 3e-3
  c.eval.probe_weight_decay = 1e-4
  return c
