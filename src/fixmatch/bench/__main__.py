"""python -m fixmatch.bench data|step|train [options] [run.py overrides ...]

    data   augmentation pairs/s on one core and loader steps/s for N workers
    step   the training step split into forward, backward, optimiser and EMA
    train  end-to-end steps/s of the real trainer and the fraction spent waiting for data

Each prints a table next to a straightforward implementation (fixmatch.bench.port), measured
in the same run, and writes the figures as JSON (--json).

Options and overrides mix in any order. The overrides configure the run as for run.py:
trainer.num_threads sets torch's threads for every command (0: torch's default, one per
core; data's pairs/s figure is one core by design), trainer.num_workers the loader processes
(data times them unless --workers says otherwise; train always uses them). Options only
apply to the commands named in their help; another command refuses them.
"""

import argparse
import json
import logging
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf

from fixmatch.config import Config, register_configs
from fixmatch.config_checks import check_config
from fixmatch.distributed import DistEnv
from fixmatch.errors import CommandLineParser, UserError
from fixmatch.output_marks import cannot_write_in
from fixmatch.overrides import typed_config
from fixmatch.preview import find_conf_dir
from fixmatch.runtime import configure_threads

log = logging.getLogger(__name__)


def compose_config(overrides: List[str]) -> Config:
    """The typed config `python run.py <overrides>` would train with, checked as run.py
    checks it (values the schema's types admit but a run refuses, a required key unset).

    Args:
        overrides: Hydra overrides, as given to run.py (`key=value`, `+key=value`, `~key`).

    Returns:
        The typed config, checked for a single rank.

    Raises:
        UserError: for an override Hydra rejects or a value the run would refuse.
    """
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(find_conf_dir()), version_base="1.3"):
            config = typed_config(compose(config_name="config", overrides=overrides))
    except HydraException as error:
        # Hydra says what failed; its cause says why (e.g. "Key 'nope' not in 'SSLConfig'").
        parts = str(error).splitlines()[:1] + str(error.__cause__ or "").splitlines()[:1]
        raise UserError(" ".join(part.strip() for part in parts if part.strip())) from None
    check_config(config, DistEnv())
    return config


def training_images(config: Config, synthetic: Optional[int]) -> np.ndarray:
    """The configured dataset's training images, or `synthetic` random ones of its shape.

    Args:
        config: the typed config; its dataset node is read (and loaded when not synthetic).
        synthetic: how many random images to make (seeded, the same each call); None loads
            the dataset.

    Returns:
        uint8 images, (N, H, W, C).
    """
    if synthetic is not None:
        shape = (synthetic, config.dataset.image_size, config.dataset.image_size, config.dataset.channels)
        return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    from fixmatch.data.datasets import load_dataset
    return load_dataset(config.dataset).train.images


def machine() -> dict:
    """What the figures were measured on, for the JSON record.

    Returns:
        The date, CPU count, torch's threads, platform, torch version and CUDA device name
        (None without CUDA).
    """
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def print_table(title: str, header: List[str], rows: List[List[str]]) -> None:
    """Print a title and a table with right-aligned columns to stdout.

    Args:
        title: the line printed above the table, after a blank line.
        header: the column names.
        rows: the cells, one list per row, as many as the header has.
    """
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    print(f"\n{title}")
    for row in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths)))


def compiled(trainer) -> str:
    """', compiled (<mode>)' for a compiled model, else ''.

    Args:
        trainer: the TrainerConfig; compile and compile_mode are read.

    Returns:
        The suffix for a table's title.
    """
    return f", compiled ({trainer.compile_mode.name})" if trainer.compile else ""


def bench_data(args, config: Config) -> dict:
    """The `data` command: augmentation pairs/s on one core and loader steps/s per worker count,
    ours and the port's, printed as a table.

    Args:
        args: the validated command line (synthetic, max_images, seconds, workers, steps).
        config: the typed config; the dataset, ssl batch sizes and views are read.

    Returns:
        The figures for the JSON record: every round's rates, the batch sizes and the images'
        shape.
    """
    from fixmatch.bench import data
    from fixmatch.bench.port import PortWeakStrong
    from fixmatch.data.transforms import WeakStrongTransform
    from fixmatch.pipeline import build_views

    if config.trainer.augment_on.value == "device":
        log.warning("data times the CPU views of trainer.augment_on=cpu; with trainer.augment_on=device "
                    "the views are made on the device, which `train` measures")
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
    source = (f"{args.synthetic} random images shaped as {config.dataset.name}" if args.synthetic
              else config.dataset.name)
    print_table(f"data pipeline: {source} {images.shape[1]}x{images.shape[2]}x"
                f"{images.shape[3]}, B {config.ssl.batch_size}, mu {config.ssl.unlabeled_ratio} "
                f"(median of {data.ROUNDS} alternating rounds)",
                ["", "ours", "port", "speed-up"], rows)
    return {"augmentation_pairs_per_s": pairs, "loader_steps_per_s": loader,
            "batch_size": config.ssl.batch_size, "unlabeled_ratio": config.ssl.unlabeled_ratio,
            "images": list(images.shape)}


def bench_step(args, config: Config) -> dict:
    """The `step` command: our training step's phases and the port's step, each timed in a
    fresh process, alternately for `args.rounds` rounds, printed with FLOP rates as a table.

    Args:
        args: the validated command line (steps, rounds).
        config: the typed config the step is built from.

    Returns:
        The figures for the JSON record: both summaries, the setting, device, threads, the
        step's FLOPs and every round's raw timings.

    Raises:
        UserError: when a timing process fails or dies before it reports.
    """
    from fixmatch.bench import step
    from fixmatch.runtime import resolve_precision, select_device

    device = select_device(config.trainer.device)
    threads = torch.get_num_threads()  # trainer.num_threads, set by main(), or torch's default
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
    """The `train` command: `args.steps` steps of the real trainer in a temporary folder; the
    median steps/s and data-wait fraction of its log windows after the first, as a table.

    Args:
        args: the validated command line (steps).
        config: the typed config; its trainer node is changed in place (length, cadences,
            progress bar).

    Returns:
        The figures for the JSON record: steps/s, data-wait fraction, peak GPU memory in GiB
        (None off CUDA), the setting and every log window's values.

    Raises:
        UserError: for any input `app.train` refuses.
    """
    import tempfile

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


# Options that only some commands use (the others would silently ignore them), and defaults.
APPLIES_TO = {"synthetic": ("data",), "max_images": ("data",), "seconds": ("data",),
              "workers": ("data",), "rounds": ("step",)}
DEFAULTS = {"max_images": 10_000, "seconds": 3.0, "rounds": 2}
ELSEWHERE = {"synthetic": "step times random batches of the configured shape, train the dataset",
             "workers": "step loads nothing, train uses trainer.num_workers"}


def _parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(prog="python -m fixmatch.bench", usage=__doc__.splitlines()[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("command", nargs="?", choices=sorted(COMMANDS), help="what to measure")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for run.py (optional)")
    parser.add_argument("--synthetic", type=int, default=None, metavar="N",
                        help="data: use N >= 1 random images of the configured shape instead of the dataset")
    parser.add_argument("--max-images", type=int, default=None, metavar="N",
                        help=f"data: images to draw from, >= 1 (default {DEFAULTS['max_images']})")
    parser.add_argument("--seconds", type=float, default=None, metavar="S",
                        help=f"data: seconds per round of pairs/s, > 0 (default {DEFAULTS['seconds']:g})")
    parser.add_argument("--workers", type=int, nargs="+", default=None, metavar="N",
                        help="data: loader workers to time, each >= 0 (default trainer.num_workers)")
    parser.add_argument("--steps", type=int, default=30, metavar="N",
                        help="steps timed per round (train: steps run), >= 1 (default 30)")
    parser.add_argument("--rounds", type=int, default=None, metavar="N",
                        help=f"step: alternating rounds, >= 1 (default {DEFAULTS['rounds']})")
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)  # replaced: validate()
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="where to write the figures (default bench-<command>.json in the current folder)")
    return parser


def _split_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]):
    """(overrides, the rest): key=value, +key=value and ~key tokens wherever they stand, except
    as the value of a one-value option (`--json a=b.json`), so that they never end up in a
    list option such as --workers."""
    one_value = [option for action in parser._actions if action.nargs is None  # flags have nargs 0
                 for option in action.option_strings if option.startswith("--")]
    overrides, rest = [], []
    for index, token in enumerate(argv):
        previous = argv[index - 1] if index else ""
        is_value = (previous.startswith("--") and "=" not in previous
                    and sum(option.startswith(previous) for option in one_value) == 1)
        if not token.startswith("-") and ("=" in token or token.startswith("~")) and not is_value:
            overrides.append(token)
        else:
            rest.append(token)
    return overrides, rest


def _at_least(option: str, value, minimum: int, what: str = "") -> None:
    if value is not None and value < minimum:
        raise UserError(f"{option} must be {minimum} or more{what}, got {value}")


def validate(args: argparse.Namespace) -> None:
    """Refuse any option a command would misuse or ignore, before any work.

    Fills in the defaults of the command's own options and the JSON path, in place.

    Args:
        args: the parsed command line.

    Raises:
        UserError: naming the option and its allowed range, or the command it applies to;
            also for --threads (replaced) and a JSON path that cannot be written.
    """
    if args.threads is not None:
        raise UserError(f"--threads was replaced by the override trainer.num_threads={args.threads} "
                        "(as for run.py; 0 keeps torch's default)")
    for name, commands in APPLIES_TO.items():
        if getattr(args, name) is not None and args.command not in commands:
            hint = f" ({ELSEWHERE[name]})" if name in ELSEWHERE else ""
            raise UserError(f"--{name.replace('_', '-')} applies to {' and '.join(commands)} only, "
                            f"not to {args.command}{hint}")
    _at_least("--synthetic", args.synthetic, 1, " (images)")
    _at_least("--max-images", args.max_images, 1)
    _at_least("--steps", args.steps, 1)
    _at_least("--rounds", args.rounds, 1)
    for workers in args.workers or []:
        _at_least("--workers", workers, 0, " (loader processes; 0 loads in the main process)")
    if args.seconds is not None and not (0 < args.seconds < math.inf):
        raise UserError(f"--seconds must be a positive number of seconds, got {args.seconds:g}")
    for name, default in DEFAULTS.items():
        if getattr(args, name) is None and args.command in APPLIES_TO[name]:
            setattr(args, name, default)
    where = f"--json {args.json}" if args.json else f"{Path.cwd() / f'bench-{args.command}.json'} (--json)"
    args.json = args.json or Path(f"bench-{args.command}.json")
    _check_writable(args.json, where)


def _check_writable(path: Path, where: str) -> None:
    """Refuse a JSON path that could not be written, or that holds a file no bench wrote,
    before the benchmark runs."""
    if path.is_dir():
        raise UserError(f"{where}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise UserError(f"{where}: folder {path.parent} does not exist")
    if path.exists() and not _is_bench_json(path):
        raise UserError(f"{where}: {path} exists and no bench wrote it; give another file name")
    reason = cannot_write_in(path.parent)
    if reason:
        raise UserError(f"{where}: cannot write in {path.parent} ({reason})")


def _is_bench_json(path: Path) -> bool:
    """An earlier bench's figures (which a rerun replaces): its command and machine keys."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("command") in COMMANDS and "machine" in record


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command, its options and the run.py overrides, in any order; validated.

    Args:
        argv: the command-line arguments after the program name.

    Returns:
        The options, with `overrides` holding every Hydra override and the defaults filled in.

    Raises:
        UserError: for a command-line mistake, a missing command or an option out of range.
    """
    parser = _parser()
    overrides, rest = _split_overrides(parser, list(argv))
    args = parser.parse_intermixed_args(rest)
    args.overrides = overrides + args.overrides  # anything left is no override: Hydra says why
    if args.command is None:
        raise UserError("no command: give data, step or train, e.g. python -m fixmatch.bench data "
                        "--synthetic 64 (see --help)")
    validate(args)
    return args


def main(argv: Sequence[str]) -> dict:
    """Run one bench command, print its table and write its figures as JSON.

    Args:
        argv: the command-line arguments after the program name.

    Returns:
        The figures written: command, overrides, machine and the command's own figures.

    Raises:
        UserError: for a bad command line or config, a failed measurement, or a JSON file
            that cannot be written.
    """
    args = parse_args(argv)
    config = compose_config(args.overrides)
    configure_threads(config.trainer.num_threads)  # as run.py does; step's processes use the same count
    if args.command == "data" and args.workers is None:
        _at_least("trainer.num_workers", config.trainer.num_workers, 0, " (0 loads in the main process)")
        args.workers = [config.trainer.num_workers]
    figures = {"command": args.command, "overrides": args.overrides, "machine": machine(),
               **COMMANDS[args.command](args, config)}
    try:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    except OSError as error:
        raise UserError(f"--json {args.json}: cannot write it ({error.strerror or error}); the "
                        "figures are printed above") from None
    print(f"\nwrote {args.json}")
    return figures


if __name__ == "__main__":
    from fixmatch.trained_model import run_command
    run_command(main)
