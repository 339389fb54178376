"""Time the device augmentation of one training step, eager and compiled, on one device, and
check that both give the same views.

    python benchmarks/device_augment_speed.py [--device cuda] [--batch 64] [--mu 7] [--steps 50]

One step's views are the labeled weak view (B images) plus the unlabeled weak and strong
views (B * mu images each). Prints milliseconds per step for each path (the mean over
--steps steps after a warm-up that includes compiling) and the share of pixels that differ.
"""

import argparse
import time

import torch

from fixmatch.data.device_augment import DeviceAugment


def step_views(augment: DeviceAugment, labeled: torch.Tensor, unlabeled: torch.Tensor, seed: int):
    generator = torch.Generator(labeled.device).manual_seed(seed)
    return (augment.weak(labeled, generator), augment.weak(unlabeled, generator),
            augment.strong(unlabeled, generator))


def ms_per_step(augment: DeviceAugment, labeled: torch.Tensor, unlabeled: torch.Tensor,
                steps: int) -> float:
    for seed in range(3):  # compiles, allocates
        step_views(augment, labeled, unlabeled, seed)
    if labeled.is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for seed in range(steps):
        step_views(augment, labeled, unlabeled, seed)
    if labeled.is_cuda:
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--mu", type=int, default=7)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator(device).manual_seed(0)
    shape = (3, args.size, args.size)
    labeled = torch.randint(0, 256, (args.batch, *shape), dtype=torch.uint8, device=device,
                            generator=generator)
    unlabeled = torch.randint(0, 256, (args.batch * args.mu, *shape), dtype=torch.uint8,
                              device=device, generator=generator)
    eager, compiled = DeviceAugment(), DeviceAugment(compiled=True)
    views = [step_views(augment, labeled, unlabeled, 123) for augment in (eager, compiled)]
    differing = [(a != b).float().mean().item() for a, b in zip(*views)]
    print(f"{device}, B {args.batch}, mu {args.mu}, {args.size}x{args.size}: pixels differing "
          f"compiled vs eager (labeled weak, unlabeled weak, strong): "
          + ", ".join(f"{100 * share:.3f} %" for share in differing))
    for name, augment in (("eager", eager), ("compiled", compiled)):
        print(f"{name}: {ms_per_step(augment, labeled, unlabeled, args.steps):.2f} ms per step")


if __name__ == "__main__":
    main()
