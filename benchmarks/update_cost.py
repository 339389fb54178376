"""Time the weight updates that follow each backward pass: the SGD step (foreach and fused)
and the EMA update, for WRN-28-2 (or another width/depth) on one device.

    python benchmarks/update_cost.py [--device cuda] [--depth 28] [--widen 2] [--steps 200]

On a GPU these updates are many small kernels, so the time the host needs to launch them
can exceed the time the GPU needs to run them; both are printed: "launch" is the host time
per update with nothing waited for (until the launch queue fills), "complete" waits for
the device after every update. On a CPU the two are the same.
"""

import argparse
import statistics
import time

import torch

from fixmatch.config import OptimConfig
from fixmatch.models import ModelEMA
from fixmatch.models.wide_resnet import WideResNet
from fixmatch.optim import build_optimizer, parameter_groups
from fixmatch.runtime import reuse_freed_host_memory


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def milliseconds(update, device: torch.device, steps: int, wait_each: bool, chunks: int = 5) -> float:
    """Median over `chunks` runs of steps / chunks updates: one stall of the machine (another
    process, the allocator) moves a mean by hundreds of updates' worth."""
    for _ in range(10):  # allocates momentum buffers, warms the caches
        update()
    synchronize(device)
    per_chunk = []
    for _ in range(chunks):
        started = time.perf_counter()
        for _ in range(steps // chunks):
            update()
            if wait_each:
                synchronize(device)
        per_chunk.append(1000 * (time.perf_counter() - started) / (steps // chunks))
        synchronize(device)
    return statistics.median(per_chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--depth", type=int, default=28)
    parser.add_argument("--widen", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="torch threads on the CPU")
    args = parser.parse_args()
    if args.steps < 5 or args.threads < 1:
        parser.error("--steps must be at least 5 (5 timed runs of steps/5 each) and --threads at least 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        reuse_freed_host_memory()  # as CPU training does; else the foreach step's temporaries page-fault
    torch.manual_seed(0)
    model = WideResNet(10, depth=args.depth, widen_factor=args.widen).to(device)
    model = model.to(memory_format=torch.channels_last)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter) * 1e-3
    config = OptimConfig()
    foreach = torch.optim.SGD(parameter_groups(model, config.weight_decay), lr=config.lr,
                              momentum=config.momentum, nesterov=config.nesterov, foreach=True)
    fused = build_optimizer(model, config)
    ema = ModelEMA(model, config.ema_decay)
    updates = {
        "SGD step, foreach": foreach.step,
        f"SGD step, ours (fused={fused.param_groups[0]['fused']})": fused.step,
        "EMA update, ours": lambda: ema.update(model, 0),
    }
    tensors = len(list(model.parameters()))
    print(f"WRN-{args.depth}-{args.widen} on {device}: {tensors} parameter tensors, "
          f"{sum(p.numel() for p in model.parameters()):,} weights; ms per update "
          f"(median of 5 runs of {args.steps // 5})")
    print(f"{'update':<40} {'launch':>8} {'complete':>9}")
    for name, update in updates.items():
        launch = milliseconds(update, device, args.steps, wait_each=False)
        complete = milliseconds(update, device, args.steps, wait_each=True)
        print(f"{name:<40} {launch:8.3f} {complete:9.3f}")


if __name__ == "__main__":
    main()
