"""The project's PyTorch peer: one BYOL training step, as a PyTorch user would write it (the GPU benchmarks).

What a user would pick instead of byol_jax: a torchvision ResNet-18 or ResNet-50 (ImageNet stem), BYOL projector
(features-4096-256, BN+ReLU), linear predictor without bias (the DirectPred shape), symmetric BYOL loss, SGD, EMA
target. Random input of the given size (data loading and augmentation excluded: byol_jax's `no_augment` variant is
the like-for-like row). Prints one JSON line: images per second (an image is one sample, two views), milliseconds
per step, and the model FLOPs of one step counted by torch.utils.flop_counter (every tap of every convolution, 2
FLOPs per multiply-add, forward and backward of the online network and forward of the target, both views) with the
MFU they give against --peak_tflops (default: the dense bf16 or fp32 datasheet peak of an H100/H200).

Run it on the same GPU, in the same call, as the byol_jax benchmark it is compared with (scripts/gpu/bench_and_study.sh):
    python3 scripts/peers/torch_byol_step.py --res 96 --batch 256 --amp --channels-last [--compile]
    python3 scripts/peers/torch_byol_step.py --arch resnet50 --res 224 --batch 128 --amp --channels-last [--compile]
Seen on one H100 (2026-11-27/28, torch 2.11, ResNet-18, 96 px, batch 256): eager fp32 about 6.8k img/s, eager bf16
channels-last 7.3-8.3k img/s, torch.compile bf16 channels-last 8.2-10.8k img/s (docs/records/gpu/).
On a CPU it runs too (small --res and --batch): a check that it works, not a figure.
"""
import argparse, json, time

import torch
import torch.nn as nn
import torchvision

FEATURES = {'resnet18': 512, 'resnet50': 2048}
# Dense datasheet peaks (TFLOP/s) by device-name substring: bf16 / fp32 (TF32 tensor cores).
PEAK_TFLOPS = {'H100': (989.0, 494.7), 'H200': (989.0, 494.7), 'A100': (312.0, 156.0)}


def mlp(i, h, o):
    return nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Linear(h, o))


def network(arch):
    backbone = getattr(torchvision.models, arch)()
    backbone.fc = nn.Identity()
    return nn.Sequential(backbone, mlp(FEATURES[arch], 4096, 256))


def peak_tflops(a, dev):
    if a.peak_tflops:
        return a.peak_tflops
    name = torch.cuda.get_device_name() if dev == 'cuda' else ''
    for key, (bf16, fp32) in PEAK_TFLOPS.items():
        if key in name:
            return bf16 if a.amp else fp32
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--arch', default='resnet18', choices=sorted(FEATURES))
    ap.add_argument('--res', type=int, default=96)
    ap.add_argument('--batch', type=int, default=256)
    ap.add_argument('--steps', type=int, default=30)
    ap.add_argument('--amp', action='store_true', help='bf16 autocast')
    ap.add_argument('--channels-last', action='store_true')
    ap.add_argument('--compile', action='store_true', help='torch.compile the step')
    ap.add_argument('--peak_tflops', type=float, default=None, help='device peak for MFU (default: table)')
    a = ap.parse_args()
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.manual_seed(0)
    online, target = network(a.arch).to(dev), network(a.arch).to(dev)
    target.load_state_dict(online.state_dict())
    for p in target.parameters():
        p.requires_grad_(False)
    predictor = nn.Linear(256, 256, bias=False).to(dev)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    online, target = online.to(memory_format=fmt), target.to(memory_format=fmt)
    opt = torch.optim.SGD(list(online.parameters()) + list(predictor.parameters()),
                          lr=0.05, momentum=0.9, weight_decay=4e-4)
    x1 = torch.randn(a.batch, 3, a.res, a.res, device=dev).contiguous(memory_format=fmt)
    x2 = torch.randn(a.batch, 3, a.res, a.res, device=dev).contiguous(memory_format=fmt)

    def loss_fn(p, z):
        return 2 - 2 * nn.functional.cosine_similarity(p, z, dim=-1).mean()

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=a.amp):
            z1, z2 = online(x1), online(x2)
            with torch.no_grad():
                t1, t2 = target(x1), target(x2)
            loss = loss_fn(predictor(z1), t2) + loss_fn(predictor(z2), t1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(0.996).add_(po, alpha=0.004)
        return loss

    # Model FLOPs of one step, counted once in eager mode (the same arithmetic the compiled step does).
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    if a.compile:
        step = torch.compile(step)
    sync = torch.cuda.synchronize if dev == 'cuda' else (lambda: None)
    t = time.perf_counter()
    for _ in range(5):
        step()
    sync()
    warmup_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    dt = (time.perf_counter() - t) / a.steps
    peak = peak_tflops(a, dev)
    print(json.dumps({'peer': 'torch', 'arch': a.arch, 'device': torch.cuda.get_device_name() if dev == 'cuda' else 'cpu',
                      'torch': torch.__version__, 'res': a.res, 'batch': a.batch, 'amp': a.amp,
                      'channels_last': a.channels_last, 'compile': a.compile, 'img_per_s': round(a.batch / dt, 1),
                      'ms_per_step': round(1e3 * dt, 2), 'gflop_per_image': round(flops / a.batch / 1e9, 3),
                      'tflops': round(flops / dt / 1e12, 2),
                      'mfu': round(flops / dt / 1e12 / peak, 4) if peak else None,
                      'warmup_seconds': round(warmup_s, 1)}), flush=True)


if __name__ == '__main__':
    main()
