"""Training-step time, split into forward (with the loss), backward, optimiser and EMA, for
ours and the port's straightforward step; each variant runs in its own process so that its
peak memory is its own."""

import multiprocessing
import queue as queue_module
import resource
import statistics
import time
from copy import deepcopy
from typing import Dict, List

import torch

from fixmatch.algorithms import FixMatch
from fixmatch.bench.port import PortStep
from fixmatch.config import Config
from fixmatch.errors import UserError
from fixmatch.models import ModelEMA
from fixmatch.optim import build_optimizer
from fixmatch.runtime import resolve_precision, reuse_freed_host_memory
from fixmatch.trainer import uses_cuda_graphs

PHASES = ("forward", "backward", "optimizer", "ema")
MATMUL_SIZE = {"cpu": 1024, "cuda": 8192}  # square operands: large enough to run at the peak rate


def _synchronize(device: torch.device) -> None:
    # Only the benchmark waits for the device, to attribute time to each phase.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(config: Config, device: torch.device, channels_last: bool):
    ssl, data = config.ssl, config.dataset
    shape = (data.channels, data.image_size, data.image_size)
    generator = torch.Generator().manual_seed(0)
    num_classes = data.num_classes or 10
    x = torch.randn(ssl.batch_size, *shape, generator=generator)
    u_weak = torch.randn(ssl.batch_size * ssl.unlabeled_ratio, *shape, generator=generator)
    u_strong = torch.randn(ssl.batch_size * ssl.unlabeled_ratio, *shape, generator=generator)
    targets = torch.randint(num_classes, (ssl.batch_size,), generator=generator)
    images = [t.to(device) for t in (x, u_weak, u_strong)]
    if channels_last:
        images = [t.contiguous(memory_format=torch.channels_last) for t in images]
    return images[0], targets.to(device), images[1], images[2]


def time_ours(config: Config, device: torch.device, steps: int) -> Dict[str, List[float]]:
    """Seconds per phase of our step, for `steps` steps after two warm-up steps.

    Args:
        config: the typed config the model, optimiser, EMA and FixMatch loss are built from.
        device: where the step runs, on random batches of the configured shape.
        steps: steps timed.

    Returns:
        For each of PHASES, the seconds of each timed step.

    Raises:
        UserError: for a model or precision setting the run would refuse.
    """
    from fixmatch.app import build_model
    trainer = config.trainer
    model = build_model(config, config.dataset.num_classes or 10).to(device)
    if trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEMA(model, config.optim.ema_decay)
    if trainer.compile:
        model.compile(mode=trainer.compile_mode.value)
    optimizer = build_optimizer(model, config.optim)
    algorithm = FixMatch(config.ssl.threshold, config.ssl.lambda_u)
    precision = resolve_precision(trainer.precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision.value)
    x, targets, u_weak, u_strong = _batches(config, device, trainer.channels_last)
    unknown = torch.full((len(u_weak),), -1, device=device)
    times = {phase: [] for phase in PHASES}
    cuda_graphs = uses_cuda_graphs(trainer, device)
    for step in range(steps + 2):
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        marks = [time.perf_counter()]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = algorithm(model, (x, targets), ((u_weak, u_strong), unknown))
        for action in (lambda: loss.backward(),
                       lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)),
                       lambda: ema.update(model, step)):
            _synchronize(device)
            marks.append(time.perf_counter())
            action()
        _synchronize(device)
        marks.append(time.perf_counter())
        if step >= 2:
            for phase, start, end in zip(PHASES, marks, marks[1:]):
                times[phase].append(end - start)
    return times


def time_port(config: Config, device: torch.device, steps: int) -> Dict[str, List[float]]:
    """Seconds per step of the port's step (fp32, NCHW, per-parameter EMA, .item() per step).

    Args:
        config: the typed config; the model, lr, weight decay and μ are read.
        device: where the step runs, on random batches of the configured shape.
        steps: steps timed, after two warm-up steps.

    Returns:
        The seconds of each timed step, under "step".
    """
    from fixmatch.app import build_model
    torch.manual_seed(0)
    model = build_model(config, config.dataset.num_classes or 10).to(device)
    ema_model = deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.optim.lr, momentum=0.9, nesterov=True,
                                weight_decay=config.optim.weight_decay)
    step_fn = PortStep(model, ema_model, optimizer, config.ssl.unlabeled_ratio)
    x, targets, u_weak, u_strong = _batches(config, device, channels_last=False)
    times = []
    for step in range(steps + 2):
        started = time.perf_counter()
        step_fn(x, targets, u_weak, u_strong)
        _synchronize(device)
        if step >= 2:
            times.append(time.perf_counter() - started)
    return {"step": times}


def step_flops(config: Config) -> float:
    """Floating-point operations of one step's forward and backward pass (convolutions and the
    head; element-wise work is not counted), counted on the meta device: no memory, no compute.

    Args:
        config: the typed config; the model, image shape, B and μ are read.

    Returns:
        FLOPs of one step's B · (1 + 2μ) images.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from fixmatch.app import build_model
    ssl, data = config.ssl, config.dataset
    images = ssl.batch_size * (1 + 2 * ssl.unlabeled_ratio)
    with torch.device("meta"):
        model = build_model(config, data.num_classes or 10)
        batch = torch.empty(images, data.channels, data.image_size, data.image_size)
    with FlopCounterMode(display=False) as counter:
        model(batch).float().logsumexp(1).mean().backward()
    return float(counter.get_total_flops())


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Dense square matmul throughput in `dtype`: a practical ceiling for the step's convolutions,
    which lower to the same kind of kernels.

    Args:
        device: where to multiply (operands of side MATMUL_SIZE for its type, else 1024).
        dtype: the operands' dtype, that of the step's autocast.
        seconds: how long to keep multiplying (at least 3 products).

    Returns:
        FLOP per second (2·n³ per product).
    """
    n = MATMUL_SIZE.get(device.type, 1024)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    _synchronize(device)
    count, started = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - started < seconds:
        a @ b
        count += 1
        if count % 8 == 0:
            _synchronize(device)
    _synchronize(device)
    return 2 * n**3 * count / (time.perf_counter() - started)


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def _child(which: str, config: Config, device: str, steps: int, threads: int, queue) -> None:
    try:
        queue.put(_time_in_child(which, config, device, steps, threads))
    except UserError as error:  # the parent says it in one line
        queue.put({"error": str(error)})
    except Exception as error:  # noqa: BLE001 - the parent must hear of it, not wait forever
        queue.put({"error": f"the {which} step failed: {type(error).__name__}: {error}"})


def _time_in_child(which: str, config: Config, device: str, steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    device_ = torch.device(device)
    if which == "ours" and device_.type == "cpu":
        reuse_freed_host_memory()  # as training on the CPU does
    times = (time_ours if which == "ours" else time_port)(config, device_, steps)
    peak_memory_gb = _peak_memory_gb(device_)
    dtype = torch.float32
    if which == "ours":
        precision = resolve_precision(config.trainer.precision, device_)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision.value, torch.float32)
    return {"times": times, "peak_memory_gb": peak_memory_gb,
            "matmul_flops_per_s": matmul_flops_per_s(device_, dtype)}


def run_isolated(which: str, config: Config, device: torch.device, steps: int, threads: int) -> dict:
    """`time_ours` or `time_port` in a fresh process (its own peak memory).

    Args:
        which: "ours" or "port".
        config: the typed config, sent to the child process.
        device: where the step runs.
        steps: steps timed.
        threads: torch's intra-op threads in the child.

    Returns:
        "times" (as the timing function returns them), "peak_memory_gb" (GPU memory on
        CUDA, else the process's peak RSS) and "matmul_flops_per_s" (the ceiling).

    Raises:
        UserError: when the child reports an error, or ends before it reports.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(which, config, str(device), steps, threads, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not process.is_alive():  # died without a word (killed, out of memory)
                raise UserError(f"the {which} step's process ended with status "
                                f"{process.exitcode} before it reported") from None
    process.join()
    if "error" in result:
        raise UserError(result["error"])
    return result


def summarize(rounds: List[dict]) -> dict:
    """Median seconds per phase over all rounds' steps, the total, and the largest peak memory.

    Args:
        rounds: `run_isolated` results of one variant.

    Returns:
        "phases_s" (median per phase), "step_s" (median of the per-step sums),
        "peak_memory_gb" (the largest) and "matmul_flops_per_s" (the median).
    """
    phases = rounds[0]["times"].keys()
    medians = {phase: statistics.median([t for r in rounds for t in r["times"][phase]]) for phase in phases}
    totals = [sum(values) for r in rounds for values in zip(*r["times"].values())]
    return {"phases_s": medians, "step_s": statistics.median(totals),
            "peak_memory_gb": max(r["peak_memory_gb"] for r in rounds),
            "matmul_flops_per_s": statistics.median(r["matmul_flops_per_s"] for r in rounds)}
