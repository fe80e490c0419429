"""The optimizer: one optax transformation over the online parameters, split three ways.

- trunk (backbone + projector): SGD with momentum (paper's STL/CIFAR recipe) or LARS (BYOL ImageNet);
- predictor: the same rule with lr times alpha_p (`predictor.lr_mult`) and its own weight decay eta_p;
- probe (the online linear probe): plain SGD with momentum, no weight decay.

Weight decay is added to the gradient before momentum, as torch.optim.SGD does. With
`optim.decay_bias_and_norm=False` (BYOL) biases and norm parameters (ndim <= 1) are excluded from weight
decay and from LARS adaptation.
Note: optax.lars applies momentum after the learning-rate scaling (decay -> trust ratio -> lr -> trace),
whereas BYOL's LARS applies momentum before the lr. The two are equal at constant lr; under warmup +
cosine they differ slightly in how momentum carries the lr of earlier steps. We use optax.lars as it is.
"""
from __future__ import annotations

import jax
import optax

from byol_jax import schedules


def _decay_mask(params, decay_bias_and_norm):
  return jax.tree.map(lambda p: decay_bias_and_norm or p.ndim > 1, params)


def _rule(config, lr, weight_decay):
  o = config.optim
  mask = lambda params: _decay_mask(params, o.decay_bias_and_norm)
  if o.name == 'lars':
    return optax.lars(lr, weight_decay=weight_decay, weight_decay_mask=mask, trust_ratio_mask=mask,
                      trust_coefficient=o.lars_trust_coefficient, momentum=o.momentum)
  return optax.chain(optax.add_decayed_weights(weight_decay, mask),
                     optax.sgd(lr, momentum=o.momentum or None))


def param_labels(params):
  """'predictor' / 'probe' for those subtrees, 'trunk' for everything else."""
  return {k: jax.tree.map(lambda _: k if k in ('predictor', 'probe') else 'trunk', v) for k, v in params.items()}


def make_optimizer(config) -> optax.GradientTransformation:
  lr = schedules.learning_rate(config)
  alpha_p = config.predictor.lr_mult
  eta_p = config.predictor.weight_decay
  if eta_p is None:
    eta_p = config.optim.weight_decay
  return optax.multi_transform(
      {
          'trunk': _rule(config, lr, config.optim.weight_decay),
          'predictor': _rule(config, lambda step: alpha_p * lr(step), eta_p),
          'probe': optax.sgd(config.eval.online_probe_lr, momentum=0.9),
      },
      param_labels)
