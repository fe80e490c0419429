"""The values of the config keys that name an implementation, importing nothing.

config.py validates a config against these lists without importing the code that implements them (loading a
config needs ml_collections only), and that code (models/, spectral.py, evaluate.py) dispatches on the same
lists, so a new choice is added here and where it is implemented.
"""

PREDICTOR_KINDS = ('mlp', 'linear', 'linear_symmetric', 'directpred', 'directcopy', 'none')  # predictor.kind
BACKBONES = ('resnet_tiny', 'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'resnet200')  # model.backbone
STEMS = ('imagenet', 'cifar', 'cifar_stride2')  # model.stem
MAX_POOL_IMPLS = ('auto', 'taps', 'phases', 'xla')  # model.max_pool_impl
CONV_IMPLS = ('auto', 'native', 'matmul_small', 'xla')  # model.conv_impl
PADDINGS = ('symmetric', 'same')  # model.padding: torchvision's, or TensorFlow/Haiku's asymmetric 'SAME' at stride 2
SOLVERS = ('eigh', 'newton_schulz', 'general')  # predictor.solver
PROBE_SOLVERS = ('lbfgs', 'adam')  # eval.probe_solver
