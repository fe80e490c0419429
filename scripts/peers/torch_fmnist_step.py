"""Peer baseline: byol_jax's CPU default training step (configs/fashion_mnist.py), written in PyTorch the
way a PyTorch user would (eager, nn.Module, standard layers). torch is imported only here; it is not in
requirements.txt. Run it with its own interpreter, beside `python -m byol_jax.bench` (the no_augment
variant: ready-made views, data loading and augmentation excluded on both sides):

    .peer/venv/bin/python scripts/peers/torch_fmnist_step.py [--batch 128] [--steps 20] [--warmup 3]
        [--repeats 3] [--threads N] [--channels-last] [--views separate|concat]
    python -m byol_jax.bench --variants=no_augment --steps=20 --repeats=3        # the same step in JAX
    bash scripts/peers/cpu_side_by_side.sh OUT_DIR                                       # both, and a table

The same function as byol_jax's step, layer by layer:
- ResNet 'resnet_tiny' (one BasicBlock per stage; 32, 64, 128, 256 channels), 'cifar_stride2' stem (3x3
  stride-2 conv, BN, ReLU, no max-pool), 1 input channel, 28x28 images, global average pool -> 256-d;
  convolutions without bias, kaiming_normal(fan_out, relu) as torchvision; BN eps 1e-5, momentum 0.1
  (flax's 0.9), scale 1 at init everywhere (no zero-init of the last BN of a block);
- projector 256-512-128 and predictor 128-512-128: Linear, BatchNorm1d(affine=False), ReLU, Linear;
- EMA target = backbone + projector, a copy of the online one at init, updated with byol_jax's cosine tau
  schedule (tau_base 0.99 over 2200 steps); the target's BatchNorm keeps its own running statistics;
- loss: symmetric BYOL, mean over the batch of (2 - 2cos(p1, t2)) + (2 - 2cos(p2, t1));
- online linear probe (256 -> 10) on detached features of view 1, cross-entropy, added to the loss;
- SGD momentum 0.9: trunk and predictor lr 0.1 with 100 warmup steps and a cosine decay to 0 at step 2200
  (torch.optim.lr_scheduler.LambdaLR, as optax.warmup_cosine_decay_schedule), weight decay 4e-4 on every parameter (config
  optim.decay_bias_and_norm=True); the probe lr 0.1 (eval.online_probe_lr), no weight decay, as
  byol_jax/optim.py does;
- views: byol_jax runs both views as one batch of 2B with per-view BatchNorm statistics (models/norm.py),
  which is the reference's two separate passes. `--views separate` (default) is what a PyTorch user writes
  for that function: each network runs each view on its own (4 forward passes: online and target, 2
  views). `--views concat` runs [view 1; view 2] in one pass per network with plain BatchNorm, so its
  statistics mix the two views: a slightly different function, timed only to show the cost of the passes.

Parameters (online: backbone + projector + predictor + probe; the target tower has none trainable):
EXPECTED_PARAMS = 1,557,354 = byol_jax's count of state.params for configs/fashion_mnist.py
(tower 1,423,072 = encoder 1,225,824 + projector 197,248; predictor 131,712; probe 2,570), computed in the
repository root with the project's interpreter by (scripts/peers/cpu_side_by_side.sh runs it and compares):
    python scripts/peers/fmnist_jax_reference.py --expect 1557354   # {"params": 1557354, "tower": 1423072, ...}
This script counts its own and reports `params` and `params_match` (and exits 1 on a mismatch).

Same function, checked numerically: `python scripts/peers/fmnist_jax_reference.py --steps_npz ref.npz` (project
interpreter) runs two real byol_jax steps on a batch of 8; `torch_fmnist_step.py --check ref.npz` loads the
same initial weights, runs two peer steps and compares: losses within 7e-7 and every online and target
parameter within 6e-7 after the two steps (they move by up to 0.12), torch 2.14.1 on CPU. `--views
concat` fails that check (loss off by 0.07), as it should: its BatchNorm mixes the views.

Seen on 2 cores of an "Intel(R) Xeon(R) Processor" (AVX-512; 2026-11-30, torch 2.14.1, 2 threads, fp32, batch
128, median of 3 runs of 3 repeats of 5 steps, other nice'd jobs on the machine): 511 img/s (480-572), 643 img/s
(500-672) with --channels-last; --views concat the same within noise (526, 622 channels-last); byol_jax.bench
no_augment in the same sitting: 135 img/s (132-139). Do not time it under `nice` beside other work: its 2 OpenMP
threads then wait on each other and a step takes seconds instead of 0.2 s (--threads 1 does not suffer so).

Prints one JSON line: images_per_sec (an image is one sample, two views) and ms_per_step, the median over
repeats of `steps` steps after `warmup` steps, the per-repeat ms, torch version and threads.
"""
import argparse, copy, json, math, platform, re, statistics, time

import torch
import torch.nn as nn
import torch.nn.functional as F

EXPECTED_PARAMS = 1557354


def conv_bn(cin, cout, k, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x), inplace=True)


class ResNetTiny(nn.Module):
    """resnet_tiny with the cifar_stride2 stem: [B, C, H, W] -> [B, 8 * width]."""

    def __init__(self, in_channels=1, width=32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.blocks = nn.Sequential(*[BasicBlock(cin, cout, 1 if i == 0 else 2)
                                      for i, (cin, cout) in enumerate(zip([width] + widths[:-1], widths))])
        self.out_dim = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1)


def mlp(i, h, o, bn_affine=False):
    return nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h, affine=bn_affine), nn.ReLU(inplace=True), nn.Linear(h, o))


class Tower(nn.Module):
    """Backbone + projector (what the EMA target copies): features and projection."""

    def __init__(self):
        super().__init__()
        self.backbone = ResNetTiny(in_channels=1, width=32)
        self.projector = mlp(256, 512, 128)

    def forward(self, x):
        f = self.backbone(x)
        return f, self.projector(f)


STEPS, WARMUP, LR = 2200, 100, 0.1  # configs/fashion_mnist.py


def lr_factor(step, warmup=WARMUP, total=STEPS):
    """byol_jax's warmup + cosine learning rate (schedules.learning_rate) over its peak."""
    if step < warmup:
        return step / warmup
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / (total - warmup)))


def tau(step, base=0.99, total=STEPS):
    """byol_jax's cosine EMA schedule (schedules.tau)."""
    return 1 - (1 - base) * (math.cos(math.pi * min(step, total) / total) + 1) / 2


def build(channels_last=False):
    """(online tower, target tower, predictor, probe, optimizer), as byol_jax's state.build and optim."""
    online, predictor, probe = Tower(), mlp(128, 512, 128), nn.Linear(256, 10)
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    if channels_last:
        online, target = online.to(memory_format=torch.channels_last), target.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([
        {'params': list(online.parameters()) + list(predictor.parameters())},
        {'params': probe.parameters(), 'lr': 0.1, 'weight_decay': 0.0},  # the online probe: no decay
    ], lr=LR, momentum=0.9, weight_decay=4e-4)
    # The trunk and predictor follow the schedule; the probe keeps its constant 0.1.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lr_factor, lambda step: 1.0])
    return online, target, predictor, probe, opt, sched


def byol_loss(p, z):
    return 2 - 2 * F.cosine_similarity(p, z, dim=-1)


def train_step(online, target, predictor, probe, opt, sched, x1, x2, labels, k, views='separate'):
    """One optimizer step k; returns (BYOL loss, probe loss)."""
    if views == 'separate':
        (f1, z1), (_, z2) = online(x1), online(x2)
        p1, p2 = predictor(z1), predictor(z2)
        with torch.no_grad():
            t1, t2 = target(x1)[1], target(x2)[1]
    else:  # one pass of [x1; x2] per network: BatchNorm statistics over both views
        x12 = torch.cat([x1, x2])
        f, z = online(x12)
        f1, (p1, p2) = f[:len(x1)], predictor(z).chunk(2)
        with torch.no_grad():
            t1, t2 = target(x12)[1].chunk(2)
    ssl_loss = (byol_loss(p1, t2) + byol_loss(p2, t1)).mean()
    probe_loss = F.cross_entropy(probe(f1.detach()), labels)
    opt.zero_grad(set_to_none=True)
    (ssl_loss + probe_loss).backward()
    opt.step()
    sched.step()
    t = tau(k)
    with torch.no_grad():
        for po, pt in zip(online.parameters(), target.parameters()):
            pt.mul_(t).add_(po, alpha=1 - t)
    return ssl_loss.detach(), probe_loss.detach()


def jax_path(net, name, ndim):
    """byol_jax's path of parameter `name` of `net` ('tower', 'predictor' or 'probe'), e.g. tower
    'backbone.blocks.1.shortcut.1.weight' -> 'tower/encoder/blocks/1/shortcut_bn/scale'."""
    s = name.replace('backbone.', 'encoder.').replace('stem.0.', 'stem_conv.').replace('stem.1.', 'stem_bn.')
    s = s.replace('shortcut.0.', 'shortcut.').replace('shortcut.1.', 'shortcut_bn.')
    s = re.sub(r'(^|projector\.)0\.', r'\1fc1.', s)
    s = re.sub(r'(^|projector\.)3\.', r'\1fc2.', s)
    s = re.sub(r'weight$', 'kernel' if ndim > 1 else 'scale', s)
    return f"{net}/{s.replace('.', '/')}"


def check(path, views='separate'):
    """Loads byol_jax's initial parameters from scripts/peers/fmnist_jax_reference.py --steps_npz, runs two steps
    of this peer on the same batch and compares the losses and the parameters after them."""
    import numpy as np
    torch.set_num_threads(1)
    ref = np.load(path)
    online, target, predictor, probe, opt, sched = build()
    named = [('tower', online, 'p'), ('predictor', predictor, 'p'), ('probe', probe, 'p'), ('tower', target, 't')]
    params = [(p, jax_path(net, n, p.ndim), kind) for net, m, kind in named for n, p in m.named_parameters()]

    def as_torch(a):  # HWIO -> OIHW, [in, out] -> [out, in]
        a = torch.from_numpy(np.array(a))
        return (a.permute(3, 2, 0, 1) if a.ndim == 4 else a.t() if a.ndim == 2 else a).contiguous()
    loaded = {j for _, j, kind in params if kind == 'p'}
    assert loaded == {k[3:] for k in ref.files if k.startswith('p0/')}, 'parameter names differ'
    with torch.no_grad():
        for p, j, _ in params:
            p.copy_(as_torch(ref['p0/' + j]))
    nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()
    x1, x2, labels = nchw(ref['view1']), nchw(ref['view2']), torch.from_numpy(ref['label']).long()
    losses = [[float(v) for v in train_step(online, target, predictor, probe, opt, sched, x1, x2, labels, k, views)]
              for k in range(2)]
    param_err = max((p.detach() - as_torch(ref[('p2/' if kind == 'p' else 't2/') + (j if kind == 'p' else
                     j.removeprefix('tower/'))])).abs().max().item() for p, j, kind in params)
    moved = max((as_torch(ref['p2/' + j]) - as_torch(ref['p0/' + j])).abs().max().item()
                for _, j, kind in params if kind == 'p')
    loss_err = float(np.abs(np.array(losses) - ref['losses']).max())
    ok = param_err < 1e-4 and loss_err < 1e-4
    print(json.dumps({'check': path, 'views': views, 'torch_losses': losses, 'jax_losses': ref['losses'].tolist(),
                      'max_loss_diff': loss_err, 'max_param_diff_after_2_steps': param_err,
                      'max_param_change_over_2_steps': moved, 'same_function': ok}), flush=True)
    if not ok:
        raise SystemExit('the peer differs from byol_jax\'s step')


def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--steps', type=int, default=20, help='timed steps per repeat')
    ap.add_argument('--warmup', type=int, default=3, help='untimed steps first')
    ap.add_argument('--repeats', type=int, default=3, help='timed repeats; the median is reported')
    ap.add_argument('--threads', type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument('--channels-last', action='store_true')
    ap.add_argument('--views', choices=('separate', 'concat'), default='separate',
                    help='separate: each view its own pass (the same function as byol_jax); concat: one pass of 2B')
    ap.add_argument('--check', metavar='NPZ', help='compare with scripts/peers/fmnist_jax_reference.py --steps_npz NPZ '
                    'instead of timing')
    a = ap.parse_args()
    if a.check:
        return check(a.check, a.views)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    online, target, predictor, probe, opt, sched = build(a.channels_last)
    n_params = sum(p.numel() for m in (online, predictor, probe) for p in m.parameters())
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    x1 = torch.randn(a.batch, 1, 28, 28).contiguous(memory_format=fmt)
    x2 = torch.randn(a.batch, 1, 28, 28).contiguous(memory_format=fmt)
    labels = torch.randint(0, 10, (a.batch,))
    nets = (online, target, predictor, probe, opt, sched)
    k = 0
    for _ in range(a.warmup):
        train_step(*nets, x1, x2, labels, k, a.views)
        k += 1
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for _ in range(a.steps):
            loss, _ = train_step(*nets, x1, x2, labels, k, a.views)
            k += 1
        times.append((time.perf_counter() - t0) / a.steps)
    dt = statistics.median(times)
    print(json.dumps({'peer': 'torch', 'config': 'fashion_mnist', 'device': 'cpu', 'cpu': cpu_name(),
                      'torch': torch.__version__, 'threads': torch.get_num_threads(), 'batch': a.batch,
                      'channels_last': a.channels_last, 'views': a.views, 'params': n_params,
                      'params_match': n_params == EXPECTED_PARAMS,
                      'images_per_sec': round(a.batch / dt, 1), 'ms_per_step': round(1e3 * dt, 2),
                      'ms_per_step_repeats': [round(1e3 * t, 2) for t in times], 'loss': round(loss.item(), 4)}),
          flush=True)
    if n_params != EXPECTED_PARAMS:
        raise SystemExit(f'parameter count {n_params} != byol_jax {EXPECTED_PARAMS}')


if __name__ == '__main__':
    main()
