"""The optimizer: one optax transformation over the online parameters, split three ways.

- trunk (backbone + projector): SGD with momentum (paper's STL/CIFAR recipe) or LARS (BYOL ImageNet);
- predictor: the same rule with lr times alpha_p (`predictor.lr_mult`) and its own weight decay eta_p;
- probe (the online linear probe): plain SGD with momentum, no weight decay.

Weight decay is added to the gradient before momentum, as torch.optim.SGD does. With
`optim.decay_bias_and_norm=False` (BYOL) biases and norm parameters (ndim <= 1) are excluded from weight
decay and from LARS adaptation.

LARS in two orders (`optim.lars_lr_applied`), both decay -> trust ratio -> ...:
- 'before_momentum' (optax.lars): ... -> lr -> momentum. The momentum sums lr-scaled updates, so an update
  carries the lr of the steps it remembers.
- 'after_momentum' (BYOL's code): ... -> momentum -> lr. The momentum sums unscaled updates and this step's lr
  scales them all.
The two are equal at a constant lr. During a linear warmup the first moves less (its momentum remembers smaller
lrs); docs/scaling.md gives the measured difference over BYOL's warmup.
"""
from __future__ import annotations

import jax
import optax

from byol_jax import schedules


def _decay_mask(params, decay_bias_and_norm):
  return jax.tree.map(lambda p: decay_bias_and_norm or p.ndim > 1, params)


def lars(learning_rate, *, weight_decay, mask, trust_coefficient, momentum, lr_applied='before_momentum'):
  """LARS with the learning rate applied before the momentum (optax.lars) or after it (BYOL's code).

  'after_momentum' is optax.lars's chain with its last two links swapped; `mask` selects the leaves that are
  decayed and adapted by the trust ratio (the others get plain momentum SGD)."""
  if lr_applied == 'before_momentum':
    return optax.lars(learning_rate, weight_decay=weight_decay, weight_decay_mask=mask, trust_ratio_mask=mask,
                      trust_coefficient=trust_coefficient, momentum=momentum)
  if lr_applied == 'after_momentum':
    return optax.chain(optax.add_decayed_weights(weight_decay, mask),
                       optax.masked(optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient), mask),
                       optax.trace(decay=momentum),
                       optax.scale_by_learning_rate(learning_rate))
  raise ValueError(f"unknown optim.lars_lr_applied {lr_applied!r}; choose 'before_momentum' or 'after_momentum'")


def _rule(config, lr, weight_decay):
  o = config.optim
  mask = lambda params: _decay_mask(params, o.decay_bias_and_norm)
  if o.name == 'lars':
    return lars(lr, weight_decay=weight_decay, mask=mask, trust_coefficient=o.lars_trust_coefficient,
                momentum=o.momentum, lr_applied=o.lars_lr_applied)
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
