"""python -m fixmatch.bench data|step|train [--synthetic] [options] [run.py overrides ...]

    data   augmentation pairs/s on one core and loader steps/s for N workers
    step   the training step split into forward, backward, optimiser and EMA
    train  end-to-end steps/s of the real trainer and the fraction spent waiting for data

Each prints a table next to a straightforward implementation (fixmatch.bench.port), measured
in the same run, and writes the figures as JSON (--json).
"""

import argparse
import os
import json
import platform
import statistics
import time
from pathlib import Path
from typing import List

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf

from fixmatch.config import Config, register_configs
from fixmatch.errors import UserError
from fixmatch.preview import find_conf_dir


def compose_config(overrides: List[str]) -> Config:
    """The typed config `python run.py <overrides>` would train with.

    Raises:
        UserError: for an override Hydra rejects.
    """
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(find_conf_dir()), version_base="1.3"):
            return OmegaConf.to_object(compose(config_name="config", overrides=overrides))
    except HydraException as error:
        # Hydra says what failed; its cause says why (e.g. "Key 'nope' not in 'SSLConfig'").
        parts = str(error).splitlines()[:1] + str(error.__cause__ or "").splitlines()[:1]
        raise UserError(" ".join(part.strip() for part in parts if part.strip())) from None


def training_images(config: Config, synthetic: int) -> np.ndarray:
    """The configured dataset's training images, or `synthetic` random ones of its shape."""
    if synthetic:
        shape = (synthetic, config.dataset.image_size, config.dataset.image_size, config.dataset.channels)
        return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    from fixmatch.data.datasets import load_dataset
    return load_dataset(config.dataset).train.images


def machine() -> dict:
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def print_table(title: str, header: List[str], rows: List[List[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    print(f"\n{title}")
    for row in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths)))


def compiled(trainer) -> str:
    """', compiled (<mode>)' for a compiled model, else ''."""
    return f", compiled ({trainer.compile_mode.name})" if trainer.compile else ""


def bench_data(args, config: Config) -> dict:
    from fixmatch.bench import data
    from fixmatch.bench.port import PortWeakStrong
    from fixmatch.data.transforms import WeakStrongTransform
    from fixmatch.pipeline import build_views

    images = np.asarray(training_images(config, args.synthetic)[:args.max_images])
    ours = WeakStrongTransform(*build_views(config))
    channels = config.dataset.channels
    port = PortWeakStrong(config.dataset.image_size, [0.5] * channels, [0.25] * channels, config.dataset.hflip)
    pairs = data.augmentation_rates(images, ours, port, args.seconds)
    rows = [["augmentation pairs/s, one core", f"{statistics.median(pairs['ours']):.0f}",
             f"{statistics.median(pairs['port']):.0f}",
             f"{statistics.median(pairs['ours']) / statistics.median(pairs['port']):.2f}x"]]
    loader = {}
    for workers in args.workers:
        rates = data.loader_rates(images, ours, port, config.dataset.hflip, config.ssl.batch_size,
                                  config.ssl.unlabeled_ratio, workers, args.steps)
        loader[workers] = rates
        rows.append([f"loader steps/s, {workers} workers", f"{statistics.median(rates['ours']):.2f}",
                     f"{statistics.median(rates['port']):.2f}",
                     f"{statistics.median(rates['ours']) / statistics.median(rates['port']):.2f}x"])
    print_table(f"data pipeline: {config.dataset.name} {images.shape[1]}x{images.shape[2]}x"
                f"{images.shape[3]}, B {config.ssl.batch_size}, mu {config.ssl.unlabeled_ratio} "
                f"(median of {data.ROUNDS} alternating rounds)",
                ["", "ours", "port", "speed-up"], rows)
    return {"augmentation_pairs_per_s": pairs, "loader_steps_per_s": loader,
            "batch_size": config.ssl.batch_size, "unlabeled_ratio": config.ssl.unlabeled_ratio,
            "images": list(images.shape)}


def bench_step(args, config: Config) -> dict:
    from fixmatch.bench import step
    from fixmatch.runtime import resolve_precision, select_device

    device = select_device(config.trainer.device)
    threads = args.threads or torch.get_num_threads()
    rounds = {"ours": [], "port": []}
    for _ in range(args.rounds):  # alternating, each in a fresh process
        for which in rounds:
            rounds[which].append(step.run_isolated(which, config, device, args.steps, threads))
    ours, port = step.summarize(rounds["ours"]), step.summarize(rounds["port"])
    flops = step.step_flops(config)
    trainer = config.trainer
    setting = (f"{resolve_precision(trainer.precision, device).value}, "
               f"{'channels_last' if trainer.channels_last else 'NCHW'}"
               f"{compiled(trainer)}")
    rows = [[f"{phase} (ms)", f"{1000 * ours['phases_s'][phase]:.1f}", ""] for phase in step.PHASES]
    rows += [["step (ms)", f"{1000 * ours['step_s']:.1f}", f"{1000 * port['step_s']:.1f}"],
             ["steps/s", f"{1 / ours['step_s']:.2f}", f"{1 / port['step_s']:.2f}"],
             ["peak memory (GiB)", f"{ours['peak_memory_gb']:.2f}", f"{port['peak_memory_gb']:.2f}"],
             ["ours / port step time", f"{ours['step_s'] / port['step_s']:.2f}", ""],
             ["model TFLOP per step (fwd + bwd)", f"{flops / 1e12:.3g}", f"{flops / 1e12:.3g}"]]
    for result in (ours, port):
        result["achieved_flops_per_s"] = flops / result["step_s"]
    rows += [["achieved TFLOP/s", *(f"{r['achieved_flops_per_s'] / 1e12:.3g}" for r in (ours, port))],
             ["dense matmul TFLOP/s (ceiling)", *(f"{r['matmul_flops_per_s'] / 1e12:.3g}" for r in (ours, port))],
             ["achieved / ceiling", *(f"{r['achieved_flops_per_s'] / r['matmul_flops_per_s']:.2f}"
                                      for r in (ours, port))]]
    model = f"WRN-{config.model.depth}-{config.model.widen_factor}"
    print_table(f"training step: {model}, B {config.ssl.batch_size}, mu {config.ssl.unlabeled_ratio}, "
                f"{device}, {threads} threads; ours {setting}; port fp32 NCHW "
                f"(median over {args.rounds} x {args.steps} steps)", ["", "ours", "port"], rows)
    return {"ours": ours, "port": port, "setting": setting, "device": str(device), "threads": threads,
            "step_flops": flops, "rounds": rounds}


def bench_train(args, config: Config) -> dict:
    import tempfile

    from omegaconf import OmegaConf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fixmatch.app import train
    from fixmatch.runtime import resolve_precision, select_device

    config.trainer.total_steps = args.steps
    config.trainer.eval_every_steps = args.steps
    config.trainer.log_every_steps = max(1, args.steps // 4)
    config.trainer.progress_bar = type(config.trainer.progress_bar).log
    device = select_device(config.trainer.device)  # where train() will run
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as folder:
        train(config, Path(folder), OmegaConf.to_yaml(OmegaConf.structured(config)))
        events = EventAccumulator(str(Path(folder) / "tensorboard"))
        events.Reload()
        series = {tag: [event.value for event in events.Scalars(tag)]
                  for tag in ("train/steps_per_s", "train/data_wait_fraction")}
    # The first window holds worker start-up and the first steps' allocations.
    steady = {tag: values[1:] or values for tag, values in series.items()}
    steps_per_s = statistics.median(steady["train/steps_per_s"])
    wait = statistics.median(steady["train/data_wait_fraction"])
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    trainer = config.trainer
    precision = resolve_precision(trainer.precision, device).value
    setting = f"{precision}{compiled(trainer)}"
    print_table(f"end to end: {config.dataset.name}, WRN-{config.model.depth}-{config.model.widen_factor}, "
                f"B {config.ssl.batch_size}, mu {config.ssl.unlabeled_ratio}, {setting}, "
                f"{trainer.num_workers} workers, augment on {trainer.augment_on.value} (median of the "
                f"log windows after the first)", ["", "value"],
                [["steps/s", f"{steps_per_s:.2f}"], ["data-wait fraction", f"{wait:.3f}"],
                 ["projected 2^20 steps (h)", f"{2**20 / steps_per_s / 3600:.1f}"],
                 *([["peak GPU memory (GiB)", f"{peak_gb:.2f}"]] if cuda else [])])
    return {"steps_per_s": steps_per_s, "data_wait_fraction": wait, "peak_gpu_memory_gb": peak_gb,
            "setting": setting, "windows": series}


COMMANDS = {"data": bench_data, "step": bench_step, "train": bench_train}


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fixmatch.bench", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for run.py")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="use N random images of the configured shape instead of the dataset")
    parser.add_argument("--max-images", type=int, default=10_000, help="images to draw from (data)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per round of pairs/s (data)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="loader workers (data)")
    parser.add_argument("--steps", type=int, default=30, help="steps timed per round (train: steps run)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (step)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (step; 0: torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures "
                        "(default bench-<command>.json in the current folder)")
    return parser.parse_args(argv)


def main(argv: List[str]) -> dict:
    args = parse_args(argv)
    config = compose_config(args.overrides)
    figures = {"command": args.command, "overrides": args.overrides, "machine": machine(),
               **COMMANDS[args.command](args, config)}
    path = args.json or Path(f"bench-{args.command}.json")
    path.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"\nwrote {path}")
    return figures


if __name__ == "__main__":
    from fixmatch.trained_model import run_command
    run_command(main)
