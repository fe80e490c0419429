"""The config schema shared by every config file, and its validation.

Config files in configs/ start from `base_config()` and change what they need, so every config has the
same keys and `--config.a.b=v` overrides are checked by ml_collections against those keys and types.
`validate()` checks values (before any compilation) and raises ConfigError with the problem and the fix.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections
from ml_collections import config_dict

# The choice lists the implementations share (choices.py); importing them imports no JAX, so neither does
# loading a config.
from byol_jax.choices import (BACKBONES, CONV_IMPLS, MAX_POOL_IMPLS, PADDINGS, PREDICTOR_KINDS, PROBE_SOLVERS,
                              SOLVERS, STEMS)

METHODS = ('byol', 'simsiam')
IN_MEMORY_DATASETS = ('fashion_mnist', 'synthetic', 'image_folder')  # image_folder: data.path, a folder of images
TFDS_DATASETS = ('stl10', 'cifar10', 'cifar100', 'imagenet2012')
CENTRE_WITH = ('ema_mean', 'batch_mean')
PRECISE_BN = ('untrained', 'always', 'never')
# Training-set sizes, to refuse a batch larger than the dataset at validation (an epoch must hold a batch); an
# image folder's is known only once read. STL-10: 'train' + 'unlabelled'. Synthetic: data.num_train, else the
# size the data loader (features.load_data) uses.
TRAIN_EXAMPLES = {'fashion_mnist': 60_000, 'cifar10': 50_000, 'cifar100': 50_000, 'stl10': 105_000,
                  'imagenet2012': 1_281_167}
SYNTHETIC_NUM_TRAIN = 512
LARS_LR_APPLIED = ('before_momentum', 'after_momentum')  # optim.lars_lr_applied


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and the fix."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = 'byol'             # 'byol' (EMA target) or 'simsiam' (target = online under stop-gradient)
  c.stop_gradient = True        # False removes the stop-gradient on the target branch (SimSiam ablation)
  c.seed = 0

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000          # total optimizer steps
  c.train.batch_size = 128      # global batch, over all devices of all hosts
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 2
  c.train.log_every = 20
  c.train.spectra_every = 100   # eigenvalues of F and W_p (linear-type predictors only)
  c.train.eval_every = 0        # offline probe + kNN every N steps; 0: only at step 0 and at the end
  c.train.eval_at_start = True  # evaluate the random initialisation (the baseline the run improves on)
  c.train.num_devices = 0       # 0: every device of every process
  c.train.cpu_devices = 0       # JAX devices made of the CPU's cores (0: automatic: one per core, at most 2, when each gets >= 64 images, else 1); see set_cpu_devices
  c.train.compute_dtype = 'float32'  # or 'bfloat16' (parameters, optimizer and BN statistics stay float32)
  c.train.progress_bar = True

  c.data = ml_collections.ConfigDict()
  c.data.name = 'fashion_mnist'
  c.data.path = ''              # folder of the dataset files ('' = the default place)
  c.data.image_size = 28        # side of the crops the network sees
  c.data.augment_preset = 'fashion_mnist'
  c.data.augment = ml_collections.ConfigDict()  # filled from the preset by finalize(); keys may be overridden
  c.data.num_train = 0          # synthetic only: sizes of the splits
  c.data.num_test = 0
  c.data.tfds_data_dir = ''     # tfds datasets: where they are prepared ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)

  c.model = ml_collections.ConfigDict()
  c.model.backbone = 'resnet18'  # resnet_tiny | resnet18 | resnet34 | resnet50 | resnet101
  c.model.width = 64            # channels of the first stage
  c.model.stem = 'cifar'        # 'cifar' (3x3 conv, no max-pool), 'cifar_stride2' (3x3/2 conv) or 'imagenet'
  c.model.max_pool_impl = 'auto'  # ImageNet stem: 'taps' (GPUs), 'phases' (CPUs), 'xla' or 'auto'; same result
  c.model.conv_impl = 'auto'    # CPUs: 'native' (compiled conv kernels) or 'matmul_small'; 'xla'; 'auto'
  # 'symmetric' (torchvision's) or 'same' (TensorFlow/Haiku's: one pixel less before than after at stride 2 on an
  # even side; DeepMind's BYOL checkpoints need it, byol_jax.weights sets it on import)
  c.model.padding = 'symmetric'
  c.model.projector_hidden = 512
  c.model.projector_dim = 128
  c.model.projector_bn_affine = False  # paper (STL/CIFAR): BatchNorm1d(affine=False); BYOL: True
  c.model.projector_output_bias = True  # the projector's last Linear has a bias (the paper's code: nn.Linear); BYOL: no
  # The last BatchNorm of each residual block starts with scale 0, so each block starts as its shortcut (BYOL's
  # Haiku ResNet, in its bottleneck blocks; Goyal et al. 2017); False: scale 1 (torchvision, the paper's code).
  c.model.zero_init_last_bn_scale = False

  c.predictor = ml_collections.ConfigDict()
  c.predictor.kind = 'mlp'      # mlp | linear | linear_symmetric | directpred | directcopy | none
  c.predictor.hidden = 512      # mlp only
  c.predictor.bn_affine = False  # mlp only
  c.predictor.use_bias = False  # linear and linear_symmetric (the mlp's output layer: predictor.output_bias)
  c.predictor.output_bias = True  # mlp only: its output Linear has a bias (the paper's code); BYOL: no
  c.predictor.lr_mult = 1.0     # alpha_p: predictor lr / trunk lr
  c.predictor.weight_decay = config_dict.placeholder(float)  # eta_p; None: same as optim.weight_decay
  c.predictor.rho = 0.3         # DirectPred: F <- rho F + (1 - rho) E_B[f f^T]
  c.predictor.cumulative_mean = False  # DirectPred: F = mean over all steps instead of the EMA
  c.predictor.eps = 0.1         # DirectPred / DirectCopy
  c.predictor.freq = 1          # DirectPred: reset W_p from F every freq steps (SGD in between)
  c.predictor.power = 2.0       # DirectPred: c in p = s^(1/c); 1 gives a DirectCopy-like spectrum
  c.predictor.eps_inside = False  # DirectPred: p = (s + eps)^(1/c) instead of s^(1/c) + eps
  c.predictor.centre = False    # DirectPred: covariance instead of correlation (paper: worse)
  # centre=True: 'ema_mean' (the reference's zero-mean option): F = EMA(M) - m m^T with m the EMA of the batch
  # means; 'batch_mean': the EMA of per-batch covariances (smaller by the covariance of the batch means).
  c.predictor.centre_with = 'ema_mean'
  # DirectPred/DirectCopy: 'eigh' (exact), 'newton_schulz' (no eigh; GPU-fast) or 'general' (the reference code's
  # float32 non-symmetric solver, torch.eig's LAPACK sgeev, on the host: spectral.directpred_predictor_general)
  c.predictor.solver = 'eigh'
  c.predictor.projection_threshold = 0.0  # DirectPred: > 0 sets p_j = 1 where s_j / s_max >= it, eps below

  c.ema = ml_collections.ConfigDict()
  c.ema.tau_base = 0.996        # target <- tau target + (1 - tau) online
  c.ema.schedule = 'constant'   # 'constant' or 'cosine' (BYOL: tau rises from tau_base to 1)
  c.ema.target_init = 'copy'    # 'copy' (BYOL) or 'independent' (the DirectPred reference code)

  c.loss = ml_collections.ConfigDict()
  c.loss.symmetric = True       # both views predict each other; False: view 1 predicts view 2 only
  # IsoLoss (Halvagal et al. 2023): the predictor's input gets the loss's gradient at the prediction, without
  # W_p^T's per-mode factor (losses.isotropic_term). Linear predictors (SGD or DirectPred) only.
  c.loss.isoloss = False

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'sgd'          # 'sgd' (momentum) or 'lars'
  c.optim.lr = 0.03             # base learning rate (times batch/256 if scale_by_batch)
  c.optim.scale_by_batch = False
  c.optim.momentum = 0.9
  c.optim.weight_decay = 4e-4
  c.optim.decay_bias_and_norm = True  # paper recipe decays every parameter; BYOL/LARS excludes them
  c.optim.schedule = 'constant'  # 'constant' or 'warmup_cosine'
  c.optim.warmup_steps = 0
  c.optim.lars_trust_coefficient = 1e-3
  # LARS: where the learning rate scales the update. 'before_momentum' (optax.lars): momentum sums lr-scaled
  # updates; 'after_momentum' (BYOL's code): lr times the momentum of unscaled updates. Equal at a constant lr.
  c.optim.lars_lr_applied = 'before_momentum'

  c.eval = ml_collections.ConfigDict()
  c.eval.online_probe_lr = 0.1  # the online probe on stop-gradient features, trained with SGD
  # Offline linear probe on frozen standardised features (byol_jax/evaluate.py). 'lbfgs': full-batch L-BFGS to the
  # optimum of mean CE + ||W||^2 / (2 probe_c N_train), i.e. sklearn's LogisticRegression(C=probe_c), converged and
  # deterministic; 'adam': the paper's protocol (probe_epochs ... probe_weight_decay), not converged.
  c.eval.probe_solver = 'lbfgs'
  c.eval.probe_c = 0.1          # lbfgs: sklearn's C (inverse L2 strength); near the best at 10k-60k examples
  c.eval.probe_max_iter = 1000  # lbfgs: iteration cap (~250 iterations on 60k x 256 Fashion-MNIST features)
  c.eval.probe_tol = 1e-5       # lbfgs: stop when the gradient norm of the objective is below this
  c.eval.probe_epochs = 50      # adam (paper): epochs, batch, lr, torch-style L2 weight decay
  c.eval.probe_batch_size = 128
  c.eval.probe_lr = 3e-4
  c.eval.probe_weight_decay = 1e-3
  c.eval.knn_k = 200
  c.eval.knn_temperature = 0.07
  c.eval.batch_size = 1000      # feature extraction batch
  c.eval.num_train = 0          # examples of the train split used by the probes; 0: all
  # Precise BatchNorm: before an evaluation, re-estimate the online tower's BatchNorm statistics from
  # precise_bn_batches training-mode passes over train-split images (eval view, batches of train.batch_size, the
  # same images for every run; mean of the batch statistics). 'untrained': only where the running statistics
  # were never trained (step 0), so the random network is measured as a network that training runs;
  # 'always': every evaluation; 'never'. The training state is not changed.
  c.eval.precise_bn = 'untrained'
  c.eval.precise_bn_batches = 100
  return c


def set_cpu_devices(config) -> int | None:
  """Splits the CPU into `train.cpu_devices` JAX devices before JAX starts (0: automatic, below).

  Automatic: one device per core (at most 2) when each device gets at least 64 images of a view and the count
  divides the batch, else one device whose compiled kernels and XLA operations use every core: below that each
  device's operations are too small and every BatchNorm waits on the other device, and more devices than cores
  are slower (the timings are in docs/benchmarks.md). The update is one function over the global batch whatever
  the device count (BatchNorm statistics, gradients and F are reduced over all devices). Entry points call this
  before any JAX computation.
  It does nothing when XLA_FLAGS already sets --xla_force_host_platform_device_count (the tests' 8 devices), or
  once JAX's backends exist. Accelerators are unaffected: their devices are not CPU devices. Returns the count
  set, or None.
  """
  import jax  # here, not at the top: loading a config must not start JAX
  from byol_jax.models import native  # (its package imports no JAX)
  if 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', ''):
    return None
  requested = config.train.cpu_devices
  _check(requested >= 0, _cpu_devices_message(requested))
  cores = max(1, min(2, native.cpu_cores()))
  batch = config.train.batch_size
  count = requested or (cores if batch % cores == 0 and batch // cores >= 64 else 1)
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:  # JAX already runs (a test, a notebook): keep its devices
    return None
  return count


def _cpu_devices_message(requested: int) -> str:
  return (f'train.cpu_devices={requested} must be >= 0; set --config.train.cpu_devices=0 (automatic) or to a '
          'device count')


def load_config_module(config_file: str, sibling: str):
  """The module of config file `sibling` beside `config_file` (config files are loaded by path, not as a
  package), so that one config can build on another's recipe."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), sibling)
  spec = importlib.util.spec_from_file_location(f'byol_jax_configs_{os.path.splitext(sibling)[0]}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def override(config: ml_collections.ConfigDict, updates: dict) -> ml_collections.ConfigDict:
  """Sets dotted keys ({'optim.lr': 0.1}) like --config.optim.lr=0.1 does; unknown keys raise."""
  for key, value in updates.items():
    node = config
    *path, leaf = key.split('.')
    for part in path:
      node = node[part]
    if leaf not in node:
      raise ConfigError(f'unknown config key {key!r}')
    node[leaf] = value
  return config


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fills data.augment from data.augment_preset where the config left it empty; returns the config."""
  from byol_jax.data import augment
  if config.data.augment_preset not in augment.PRESETS:
    raise ConfigError(_choose('data.augment_preset', config.data.augment_preset, sorted(augment.PRESETS)))
  preset = augment.augment_config(config.data.augment_preset)
  with config.unlocked():
    for key, value in preset.items():
      if key not in config.data.augment:
        config.data.augment[key] = value
  return config


def _check(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def _choose(key: str, value, choices, note: str = '') -> str:
  """The message for a value outside its choices: the key, the value and the flag that fixes it."""
  return (f'{key}={value!r} is unknown; set --config.{key} to one of {", ".join(map(repr, choices))}'
          + (f' ({note})' if note else ''))


def _positive(key: str, value, what: str = 'a positive number') -> str:
  return f'{key}={value} must be positive; set --config.{key} to {what}'


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError for values that cannot work; the message names the key and the flag that fixes it."""
  c = config
  _check(c.method in METHODS, _choose('method', c.method, METHODS))
  _check(c.stop_gradient or c.method == 'simsiam',
         'stop_gradient=False needs method=simsiam (a BYOL target is an EMA, with no gradient path to remove): '
         'add --config.method=simsiam, or drop --config.stop_gradient=False')
  _check(c.predictor.kind in PREDICTOR_KINDS, _choose('predictor.kind', c.predictor.kind, PREDICTOR_KINDS))
  _check(c.train.steps > 0, _positive('train.steps', c.train.steps, 'the number of optimizer steps'))
  _check(c.train.batch_size > 0, _positive('train.batch_size', c.train.batch_size, 'the global batch size'))
  _check(c.train.checkpoint_every > 0,
         _positive('train.checkpoint_every', c.train.checkpoint_every, 'the steps between checkpoints'))
  _check(c.train.log_every > 0, _positive('train.log_every', c.train.log_every, 'the steps between log records'))
  _check(c.train.cpu_devices >= 0, _cpu_devices_message(c.train.cpu_devices))
  _check(c.train.compute_dtype in ('float32', 'bfloat16'),
         _choose('train.compute_dtype', c.train.compute_dtype, ('float32', 'bfloat16')))
  if num_devices is not None:
    _check(c.train.batch_size % num_devices == 0,
           f'train.batch_size={c.train.batch_size} is not divisible by the {num_devices} devices; set '
           f'--config.train.batch_size to a multiple of {num_devices}, or --config.train.num_devices to a divisor '
           f'of {c.train.batch_size}')
  _check(c.data.name in IN_MEMORY_DATASETS + TFDS_DATASETS,
         _choose('data.name', c.data.name, IN_MEMORY_DATASETS + TFDS_DATASETS))
  num_train = ((c.data.num_train or SYNTHETIC_NUM_TRAIN) if c.data.name == 'synthetic' else
               TRAIN_EXAMPLES.get(c.data.name))
  _check(num_train is None or c.train.batch_size <= num_train,
         f'train.batch_size={c.train.batch_size} is larger than the {c.data.name} training set ({num_train} images): '
         f'set --config.train.batch_size to at most {num_train}'
         + (f', or --config.data.num_train to at least {c.train.batch_size}' if c.data.name == 'synthetic' else ''))
  _check(c.data.image_size > 0, _positive('data.image_size', c.data.image_size, 'the side of the crops in pixels'))
  _check(c.data.name != 'image_folder' or bool(c.data.path),
         'data.name=image_folder needs --config.data.path=<a folder of PNG or JPEG images>')
  _check(c.model.backbone in BACKBONES, _choose('model.backbone', c.model.backbone, BACKBONES))
  _check(c.model.stem in STEMS, _choose('model.stem', c.model.stem, STEMS))
  _check(c.model.max_pool_impl in MAX_POOL_IMPLS,
         _choose('model.max_pool_impl', c.model.max_pool_impl, MAX_POOL_IMPLS, 'all compute the same function'))
  _check(c.model.conv_impl in CONV_IMPLS,
         _choose('model.conv_impl', c.model.conv_impl, CONV_IMPLS, 'all compute the same function'))
  _check(c.model.padding in PADDINGS,
         _choose('model.padding', c.model.padding, PADDINGS, "'same' for networks trained in TensorFlow or Haiku"))
  p = c.predictor
  _check(p.freq >= 1, f'predictor.freq={p.freq} must be >= 1; set --config.predictor.freq=1 to reset W_p every '
         'step, or n for every n steps')
  _check(0.0 <= p.rho < 1.0, f'predictor.rho={p.rho} must be in [0, 1); set --config.predictor.rho (the paper: 0.3)')
  _check(p.power > 0, _positive('predictor.power', p.power, 'c in p = s^(1/c) (DirectPred: 2)'))
  _check(p.eps >= 0 or p.eps_inside,
         f'predictor.eps={p.eps} < 0 only makes sense with eps inside the root (the c_j ablation): add '
         '--config.predictor.eps_inside=True, or set --config.predictor.eps >= 0')
  _check(p.centre_with in CENTRE_WITH, _choose('predictor.centre_with', p.centre_with, CENTRE_WITH))
  _check(not (p.kind == 'mlp' and p.use_bias),
         "predictor.use_bias=True does not reach the 2-layer predictor (kind 'mlp'): its output layer's bias is "
         '--config.predictor.output_bias (True by default); drop --config.predictor.use_bias')
  _check(p.solver in SOLVERS, _choose('predictor.solver', p.solver, SOLVERS))
  _check(not c.loss.isoloss or p.kind in ('linear', 'linear_symmetric', 'directpred', 'directcopy'),
         f'loss.isoloss=True needs a linear predictor (IsoLoss removes W_p from the gradient), not '
         f'predictor.kind={p.kind!r}: set --config.predictor.kind=directpred (or linear, linear_symmetric)')
  _check(not c.loss.isoloss or c.stop_gradient,
         'loss.isoloss=True needs the stop-gradient on the target: drop --config.stop_gradient=False')
  _check(0.0 <= p.projection_threshold < 1.0,
         f'predictor.projection_threshold={p.projection_threshold} must be in [0, 1): the fraction of s_max '
         'above which a mode of F gets p_j = 1 (0: the power rule p = s^(1/c) + eps)')
  _check(p.lr_mult >= 0, f'predictor.lr_mult={p.lr_mult} (alpha_p) must be >= 0; set --config.predictor.lr_mult')
  _check(p.weight_decay is None or p.weight_decay >= 0,
         f'predictor.weight_decay={p.weight_decay} must be >= 0; set --config.predictor.weight_decay')
  _check(0.0 <= c.ema.tau_base <= 1.0,
         f'ema.tau_base={c.ema.tau_base} must be in [0, 1]; set --config.ema.tau_base (0: no EMA)')
  _check(c.ema.schedule in ('constant', 'cosine'), _choose('ema.schedule', c.ema.schedule, ('constant', 'cosine')))
  _check(c.ema.target_init in ('copy', 'independent'),
         _choose('ema.target_init', c.ema.target_init, ('copy', 'independent')))
  _check(c.optim.name in ('sgd', 'lars'), _choose('optim.name', c.optim.name, ('sgd', 'lars')))
  _check(c.optim.lars_lr_applied in LARS_LR_APPLIED,
         _choose('optim.lars_lr_applied', c.optim.lars_lr_applied, LARS_LR_APPLIED,
                 "'after_momentum' is BYOL's LARS; the two are equal at a constant lr"))
  _check(c.optim.schedule in ('constant', 'warmup_cosine'),
         _choose('optim.schedule', c.optim.schedule, ('constant', 'warmup_cosine')))
  _check(c.optim.lr > 0, _positive('optim.lr', c.optim.lr, 'the base learning rate'))
  _check(c.optim.weight_decay >= 0,
         f'optim.weight_decay={c.optim.weight_decay} must be >= 0; set --config.optim.weight_decay')
  steps, warmup = c.train.steps, c.optim.warmup_steps
  _check(0 <= warmup < steps or c.optim.schedule == 'constant',
         f'optim.warmup_steps={warmup} must be >= 0 and smaller than train.steps={steps} '
         f"(optim.schedule='{c.optim.schedule}'): set --config.optim.warmup_steps to fewer than {steps}, or "
         f'--config.train.steps to more than {warmup}')
  _check(c.eval.knn_k > 0, _positive('eval.knn_k', c.eval.knn_k, 'the number of neighbours'))
  _check(c.eval.probe_epochs > 0, _positive('eval.probe_epochs', c.eval.probe_epochs, "the 'adam' probe's epochs"))
  _check(c.eval.probe_solver in PROBE_SOLVERS,
         _choose('eval.probe_solver', c.eval.probe_solver, PROBE_SOLVERS,
                 "'lbfgs': converged; 'adam': the paper's protocol"))
  _check(c.eval.precise_bn in PRECISE_BN, _choose('eval.precise_bn', c.eval.precise_bn, PRECISE_BN))
  _check(c.eval.precise_bn_batches > 0,
         _positive('eval.precise_bn_batches', c.eval.precise_bn_batches,
                   'the batches to average; or switch precise BatchNorm off: --config.eval.precise_bn=never'))
  _check(c.eval.probe_c > 0,
         _positive('eval.probe_c', c.eval.probe_c, "sklearn's C (smaller is stronger L2; default 0.1)"))
  _check(c.eval.probe_max_iter > 0,
         _positive('eval.probe_max_iter', c.eval.probe_max_iter, "the 'lbfgs' probe's iteration cap"))
  _check(c.eval.probe_tol > 0, _positive('eval.probe_tol', c.eval.probe_tol, "the 'lbfgs' probe's gradient tolerance"))
