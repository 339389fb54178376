"""The process's hardware setup: which device to use, how many CPU threads, global seeds."""

import ctypes
import ctypes.util
import random
from typing import Optional

import numpy as np
import torch

from fixmatch.config import Device, Precision
from fixmatch.errors import UserError


def select_device(choice: Device, local_rank: Optional[int] = None) -> torch.device:
    """CUDA when asked for or when `auto` finds it, else the CPU.

    Args:
        choice: auto, cpu or cuda.
        local_rank: under torchrun, this process's GPU index on its node (made the current
            CUDA device); None for a single process.

    Returns:
        The CPU, the current CUDA device, or the local rank's GPU.

    Raises:
        UserError: when CUDA is asked for on a machine without it, or the local rank has no
            GPU of its own.
    """
    if choice is Device.cuda and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    if choice is Device.cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank is None:
        return torch.device("cuda")
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are "
                        "visible; start at most that many processes per node")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def resolve_precision(precision: Precision, device: torch.device) -> Precision:
    """`auto` as bf16 or fp32 for `device`; fp16 refused where it cannot run.

    fp16 needs a gradient scaler and CUDA kernels; `auto` takes bf16 only on CUDA devices
    with bf16 support (on CPUs without bf16 instructions it would be emulated, and slow).

    Args:
        precision: trainer.precision (auto, fp32, bf16 or fp16).
        device: the device the run trains on.

    Returns:
        The precision to train in: never auto.

    Raises:
        UserError: fp16 asked for off CUDA.
    """
    if precision is Precision.fp16 and device.type != "cuda":
        raise UserError("trainer.precision=fp16 needs a CUDA device; use trainer.precision=bf16 or fp32 on the CPU")
    if precision is Precision.auto:
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return Precision.bf16 if bf16 else Precision.fp32
    return precision


def configure_threads(num_threads: int) -> None:
    """Set torch's intra-op threads.

    Args:
        num_threads: trainer.num_threads; 0 keeps torch's default (one per core).

    Raises:
        UserError: for a negative count.
    """
    if num_threads < 0:
        raise UserError(f"trainer.num_threads={num_threads} must be 0 (torch's default) or positive")
    if num_threads:
        torch.set_num_threads(num_threads)


# mallopt() parameters from glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
INT_MAX = 2**31 - 1


def reuse_freed_host_memory() -> bool:
    """Have glibc keep freed memory in the process for the next allocation (CPU training).

    A CPU training step allocates and frees the same multi-megabyte activations every step.
    glibc serves blocks that large with a fresh mmap() and unmaps them when freed, so every
    step the kernel faults in and zeroes every page again: ~120,000 page faults per step of
    WRN-28-2 at B 16, mu 7. With mmap off and trimming off, freed blocks stay in the heap
    and the next step reuses them. Memory is then not handed back to the system until the
    process ends, which is why only CPU training does this.

    Returns:
        Whether the allocator took the settings (False off glibc, e.g. macOS or musl).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, INT_MAX))


def seed_everything(seed: int) -> None:
    """Seed the global generators, which decide the initial weights.

    Augmentations do not draw from them: each sample gets its own seeded generator.

    Args:
        seed: the run's seed, for Python's, NumPy's (mod 2**32) and torch's generators.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict:
    """Every global generator's state, as tensors and plain types (safe to load).

    Returns:
        The states of Python's, NumPy's, torch's CPU and every CUDA device's generator
        (an empty list without CUDA), keyed python, numpy, torch and cuda.
    """
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)),
                  int(numpy_state[2]), int(numpy_state[3]), float(numpy_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    """Put back what `capture_rng_state` saved.

    Args:
        state: a `capture_rng_state` record; its CUDA states are restored only where this
            machine has CUDA and as many devices as the saving one.
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
