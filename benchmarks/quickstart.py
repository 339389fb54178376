"""Quickstart benchmark: FixMatch vs the supervised baseline over several seeds.

Runs `python run.py experiment=quickstart seed=S` and the same with `ssl=supervised`
for each seed, one after the other, then prints the final EMA test accuracy (mean ± std
over seeds) and the wall time per run, read from each run's metrics.json. A run already
completed in `--out` (a rerun of the benchmark) is reused, and its time is its training's.

    python benchmarks/quickstart.py --seeds 1 2 3 [--out outputs/bench_quickstart]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALGORITHMS = ("fixmatch", "supervised")


def run_one(algorithm: str, seed: int, run_dir: Path, extra: list) -> dict:
    command = [sys.executable, str(REPO / "run.py"), "experiment=quickstart", f"ssl={algorithm}",
               f"seed={seed}", f"hydra.run.dir={run_dir}", *extra]
    reused = completed(run_dir)
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((run_dir / "metrics.json").read_text())
    # A reused run took seconds now (run.py finds it done): its own training time stands in,
    # which leaves out the start-up (imports, data) of a fresh process.
    summary["reused"] = reused
    summary["process_wall_s"] = summary["wall_time_s"] if reused else time.monotonic() - started
    return summary


def completed(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    except (OSError, ValueError, KeyError):
        return False


def mean_std(values: list) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_quickstart"
                        / time.strftime("%Y-%m-%d_%H-%M-%S"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()

    results = {name: [] for name in ALGORITHMS}
    for seed in args.seeds:
        for algorithm in ALGORITHMS:
            summary = run_one(algorithm, seed, args.out / f"{algorithm}_seed{seed}", args.overrides)
            results[algorithm].append(summary)
            print(f"{algorithm:10s} seed {seed}: final {summary['top1_ema_final']:.2f} %  "
                  f"median-last-20 {summary['top1_ema_median_last20']:.2f} %  "
                  f"{summary['process_wall_s']:.0f} s"
                  f"{' (reused: training time of the earlier run)' if summary['reused'] else ''}",
                  flush=True)

    print("\n| algorithm | seeds | final EMA top-1 (%) | median last 20 (%) | wall time per run (s) |")
    print("|---|---|---|---|---|")
    for algorithm, runs in results.items():
        print(f"| {algorithm} | {len(runs)} | {mean_std([r['top1_ema_final'] for r in runs])} | "
              f"{mean_std([r['top1_ema_median_last20'] for r in runs])} | "
              f"{mean_std([r['process_wall_s'] for r in runs])} |")
    gap = (statistics.mean(r["top1_ema_final"] for r in results["fixmatch"])
           - statistics.mean(r["top1_ema_final"] for r in results["supervised"]))
    print(f"\nFixMatch - supervised (final, mean over seeds): {gap:+.2f} points")
    (args.out / "summary.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
