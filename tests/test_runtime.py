"""The process setup: device choice, precision, threads and the host allocator."""

import subprocess
import sys

import pytest
import torch

from fixmatch.config import Device, Precision
from fixmatch.errors import UserError
from fixmatch.runtime import configure_threads, resolve_precision, select_device

# Allocates, touches and frees a 48 MB tensor 20 times; prints the page faults of the last 10.
FAULTS_OF_REPEATED_ALLOCATIONS = """
import resource, sys, torch
from fixmatch.runtime import reuse_freed_host_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_host_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(20):
    if i == 10:
        start = faults()
    torch.ones(12 * 2**20)
print(faults() - start)
"""


def _page_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", FAULTS_OF_REPEATED_ALLOCATIONS, mode],
                            capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_activations_are_reused_instead_of_faulted_in_again():
    default, reused = _page_faults("default"), _page_faults("reuse")
    pages = 48 * 2**20 // 4096
    assert default > 5 * pages  # every allocation faults its 12,288 pages in again
    assert reused < pages // 10


def test_auto_precision_is_fp32_on_the_cpu_and_fp16_needs_cuda():
    cpu = torch.device("cpu")
    assert resolve_precision(Precision.auto, cpu) is Precision.fp32
    assert resolve_precision(Precision.bf16, cpu) is Precision.bf16
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        resolve_precision(Precision.fp16, cpu)


def test_cpu_is_chosen_when_asked_and_cuda_is_refused_without_a_gpu():
    assert select_device(Device.cpu) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert select_device(Device.auto) == torch.device("cpu")
        with pytest.raises(UserError, match="no CUDA device is visible"):
            select_device(Device.cuda)


def test_a_negative_thread_count_is_refused():
    with pytest.raises(UserError, match="trainer.num_threads=-1"):
        configure_threads(-1)
