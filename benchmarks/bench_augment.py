"""Batched per-sample augmentation (DeviceAugment, Kornia) vs per-sample albumentations (CpuAugment).

    python benchmarks/bench_augment.py [--preset default] [--batch 64] [--size 224] [--repeats 5]

Same preset, same 64 images of 3 x size x size: DeviceAugment on the whole batch (on the CPU here,
on the GPU when there is one) vs CpuAugment over the images one by one (what a loader worker does).
Prints ``name: ours X, baseline Y, ratio R`` in images/s (median of --repeats after a warm-up).
With CUDA it also prints the augmentation time as a share of a ResNet-50 AMP training step at the
same batch and size.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch


from utility.data.augment import CpuAugment, DeviceAugment, load_preset


def timed(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    preset = load_preset(args.preset)
    shape = (args.size, args.size)
    x = torch.rand(args.batch, 3, *shape)
    n = args.batch
    print(f"preset {args.preset}: {preset.model_dump(exclude={'description'})}; batch {n} x 3 x {args.size}^2")

    dev = DeviceAugment(preset, shape)
    cpu = CpuAugment(preset, shape)
    threads = torch.get_num_threads()
    for nt, note in ((1, "1 thread each, as in a loader worker"), (threads, f"{threads} torch threads")):
        torch.set_num_threads(nt)
        t_dev = timed(lambda: dev(x), args.repeats)
        t_cpu = timed(lambda: [cpu(x[i]) for i in range(n)], args.repeats)
        print(f"augment_cpu_images_per_s_{nt}thread: ours {n / t_dev:.0f}, baseline {n / t_cpu:.0f}, "
              f"ratio {t_cpu / t_dev:.2f} (DeviceAugment batched on the CPU vs CpuAugment per sample; {note})",
              flush=True)
    torch.set_num_threads(threads)

    if torch.cuda.is_available():
        import torchvision

        cuda = torch.device("cuda")
        sync = torch.cuda.synchronize
        xg = x.to(cuda)
        devg = DeviceAugment(preset, shape).to(cuda)
        t_dev_g = timed(lambda: devg(xg), args.repeats * 4, sync)
        print(f"augment_gpu_vs_cpu_per_sample_images_per_s: ours {n / t_dev_g:.0f}, baseline {n / t_cpu:.0f}, "
              f"ratio {t_cpu / t_dev_g:.2f}")
        model = torchvision.models.resnet50(num_classes=1000).to(cuda).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scaler = torch.amp.GradScaler("cuda")
        y = torch.randint(0, 1000, (n,), device=cuda)

        def step(aug: bool) -> None:
            inp = devg(xg) if aug else xg
            with torch.autocast("cuda", dtype=torch.float16):
                loss = torch.nn.functional.cross_entropy(model(inp.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        for _ in range(3):
            step(True)
        t_step = timed(lambda: step(False), args.repeats * 4, sync)
        t_step_aug = timed(lambda: step(True), args.repeats * 4, sync)
        print(f"augment_share_of_resnet50_amp_step: ours {t_dev_g * 1e3:.2f} ms, baseline {t_step * 1e3:.2f} ms "
              f"(step without augmentation), ratio {t_dev_g / t_step:.3f}; step with augmentation "
              f"{t_step_aug * 1e3:.2f} ms (+{(t_step_aug / t_step - 1) * 100:.1f} %)")
    else:
        print("info: no CUDA here: the augmentation share of a ResNet-50 AMP step was not measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
