"""What CTAugment costs per step: median step time with RandAugment and with CTAugment, the
loaders' share of it, and the time in CTAProbe.update (probe forward, host copy, rate update).

Runs `experiment=quickstart` (or, with --cifar, a synthetic 32x32 CIFAR-10 at B=16, mu=7)
in this process for each augmentation, alternating, and times every step after a warm-up.

    python benchmarks/cta_probe_cost.py [--steps 80] [--rounds 2] [--cifar] [overrides ...]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # conftest: compose_config and the synthetic CIFAR-10

from conftest import compose_config, tiny_cifar_overrides, write_cifar10  # noqa: E402
from fixmatch.app import run_experiment  # noqa: E402
from fixmatch.cta_probe import CTAProbe  # noqa: E402
from fixmatch.trainer import Trainer  # noqa: E402

WARMUP_STEPS = 10


def timed(timings: list, function):
    """`function`, appending the wall time of every call to `timings`."""
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        result = function(*args, **kwargs)
        timings.append(time.perf_counter() - started)
        return result
    return wrapper


def median_ms(values: list) -> float:
    return statistics.median(values[WARMUP_STEPS:]) * 1e3 if len(values) > WARMUP_STEPS else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cifar", action="store_true", help="32x32 synthetic CIFAR-10 instead")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS or args.rounds < 1:
        parser.error(f"--steps must be above the {WARMUP_STEPS} warm-up steps, --rounds at least 1")
    with tempfile.TemporaryDirectory(prefix="cta_probe_cost_") as folder:  # runs, then gone
        time_both(args, Path(folder))


def time_both(args, scratch: Path) -> None:
    """Each round: the quickstart (or --cifar) with RandAugment, then with CTAugment."""
    base = ["experiment=quickstart"]
    if args.cifar:
        data = write_cifar10(scratch / "cifar", train_per_class=20, test_per_class=10)
        base = tiny_cifar_overrides(data, "ssl.batch_size=16", "ssl.unlabeled_ratio=7")
    timings = {"step": [], "data": [], "probe": []}
    Trainer._train_step = timed(timings["step"], Trainer._train_step)
    Trainer._next_batches = timed(timings["data"], Trainer._next_batches)
    CTAProbe.update = timed(timings["probe"], CTAProbe.update)

    for round_number in range(1, args.rounds + 1):
        for ssl in ["fixmatch", "fixmatch_cta"]:
            for values in timings.values():
                values.clear()
            cfg = compose_config([*base, f"ssl={ssl}", f"trainer.total_steps={args.steps}",
                                  f"trainer.eval_every_steps={args.steps}", "trainer.progress_bar=log",
                                  *args.overrides])
            run_experiment(cfg, scratch / f"{ssl}_{round_number}")
            print(f"round {round_number} ssl={ssl:13s} median step {median_ms(timings['step']):6.1f} ms "
                  f"(loading {median_ms(timings['data']):5.1f} ms, CTAProbe.update "
                  f"{median_ms(timings['probe']):4.1f} ms) over {len(timings['step']) - WARMUP_STEPS} steps",
                  flush=True)


if __name__ == "__main__":
    main()
