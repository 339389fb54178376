"""torchrun on the CPU with gloo: one run folder, one split, the single-process batch."""

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config, tiny_cifar_overrides
from fixmatch import app
from fixmatch.app import build_training_parts
from fixmatch.checkpoint import load_checkpoint
from fixmatch.data.datasets import load_dataset
from fixmatch.data.loaders import InfiniteBatchSampler
from fixmatch.data.normalization import resolve_normalization
from fixmatch.data.split import draw_labeled_split
from fixmatch.distributed import DistEnv, RankLostError, lost_rank_reason
from fixmatch.metrics import MetricWriter
from fixmatch.runtime import seed_everything
from fixmatch.step_stats import RunningMeans

REPO = CONF_DIR.parent


def torchrun_command(nproc: int, overrides: list, cwd: Path) -> list:
    # torchrun's own log folder in the test's folder: by default it leaves a
    # /tmp/torchelastic_* tree behind on every launch.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", f"--log-dir={cwd / 'torchrun_logs'}",
            str(REPO / "run.py"), *overrides]


def torchrun(nproc: int, overrides: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command(nproc, overrides, cwd), cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def ddp_overrides(root: Path, *extra: str) -> list:
    # 2 ranks on 2 cores: one thread each.
    return tiny_cifar_overrides(root, "trainer.num_threads=1", "trainer.total_steps=4",
                                "trainer.eval_every_steps=2", *extra)


def test_ranks_share_every_global_batch_exactly():
    single = InfiniteBatchSampler(range(50), 8, seed=3, stream=1)
    ranks = [InfiniteBatchSampler(range(50), 8, seed=3, stream=1, rank=r, world_size=2) for r in (0, 1)]
    for number in range(20):
        assert ranks[0].batch(number) + ranks[1].batch(number) == single.batch(number)


@pytest.mark.slow
def test_two_ranks_write_one_run_folder_with_one_split(tiny_cifar10, tmp_path):
    result = torchrun(2, ddp_overrides(tiny_cifar10), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [path.parent for path in (tmp_path / "outputs").rglob("metrics.json")]
    assert len(runs) == 1, runs
    summary = json.loads((runs[0] / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 4
    assert summary["world_size"] == 2  # the results table keeps it apart from 1-process runs
    split = json.loads((runs[0] / "split.json").read_text())
    log = (runs[0] / "run.log").read_text()
    assert f"labeled split sha256 on ranks 0..1: ['{split['sha256']}', '{split['sha256']}']" in log


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_ranks_checkpoint_and_stop_when_torchrun_dies_of_a_signal_it_does_not_forward(tiny_cifar10, tmp_path):
    # Before: SIGUSR1 (what Slurm is often asked to send) ended torchrun alone; its ranks,
    # each in a session of its own, trained on as orphans and metrics.json said "running".
    run_dir = tmp_path / "run"
    overrides = ddp_overrides(tiny_cifar10, "trainer.total_steps=100000", f"hydra.run.dir={run_dir}")
    launcher = subprocess.Popen(torchrun_command(2, overrides, tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, evaluations = time.monotonic() + 120, run_dir / "metrics.jsonl"
        # metrics.jsonl is created (empty) when training starts; its first line means the
        # ranks are in the step loop, where a stop signal means "checkpoint, then stop".
        while not (evaluations.exists() and evaluations.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert evaluations.read_text().strip(), launcher.stderr.read().decode()[-2000:]
        launcher.send_signal(signal.SIGUSR1)
        launcher.wait(timeout=30)
        summary, metrics = {}, run_dir / "metrics.json"  # written when the run stops
        while summary.get("status") != "preempted" and time.monotonic() < deadline + 60:
            time.sleep(0.5)
            summary = json.loads(metrics.read_text()) if metrics.exists() else {}
        assert summary["status"] == "preempted" and summary["step"] < 100000, summary
        assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == summary["step"]
    finally:
        launcher.kill()
        subprocess.run(["pkill", "-f", f"hydra.run.dir={run_dir}"], check=False)


@pytest.mark.slow
def test_two_ranks_take_the_step_of_one_process_with_two_batchnorm_towers(tiny_cifar10, tmp_path):
    """Each rank normalises its own half of the global batch (per-tower BN, as the paper's
    multi-GPU code), so the exact single-process equivalent is one model that sees the two
    halves in turn and averages their losses. The first step's loss and the updated weights
    must match that."""
    extra = ["trainer.total_steps=1", "trainer.eval_every_steps=1", "trainer.log_every_steps=1"]
    result = torchrun(2, ddp_overrides(tiny_cifar10, *extra, f"hydra.run.dir={tmp_path}/ddp"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    config = OmegaConf.to_object(compose_config(ddp_overrides(tiny_cifar10, *extra)))
    arrays = load_dataset(config.dataset)
    split = draw_labeled_split(arrays.train.targets, config.ssl.num_labeled, 10, config.ssl.split_seed)
    towers = []
    for rank in (0, 1):
        seed_everything(config.seed)  # each rank starts from the same seed
        normalization = resolve_normalization(config.dataset.mean, config.dataset.std,
                                              arrays.train.images, None)
        towers.append(build_training_parts(config, arrays, split, normalization, torch.device("cpu"),
                                           0, DistEnv(rank=rank, world_size=2)))
    model, optimizer = towers[0].model, towers[0].optimizer
    losses = []
    for tower in towers:
        loss, _ = tower.algorithm(model, tower.inputs.labeled(next(tower.labeled_batches)),
                                  tower.inputs.unlabeled(next(tower.unlabeled_batches)))
        (loss / 2).backward()  # DDP averages the ranks' gradients
        losses.append(loss.item())
    optimizer.step()

    logged = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[0])
    assert logged["train/loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)
    saved = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["model"]
    for name, parameter in model.named_parameters():
        assert torch.allclose(saved[name], parameter.detach(), rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
def test_two_rank_run_resumes_and_refuses_an_indivisible_batch(tiny_cifar10, tmp_path):
    run_dir = f"hydra.run.dir={tmp_path}/run"
    first = torchrun(2, ddp_overrides(tiny_cifar10, run_dir), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    longer = torchrun(2, ddp_overrides(tiny_cifar10, run_dir, "trainer.total_steps=6"), cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 6
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]
    odd = torchrun(2, ddp_overrides(tiny_cifar10, "ssl.batch_size=5", f"hydra.run.dir={tmp_path}/odd"),
                   cwd=tmp_path)
    assert odd.returncode != 0
    assert "must be divisible by the 2 ranks" in odd.stderr


def test_a_resumed_window_of_training_means_counts_every_ranks_steps_once():
    # Before: each rank's checkpointed sums were rank 0's, loaded by every rank, so the first
    # logged means after a resume counted rank 0's steps twice and rank 1's never.
    window = RunningMeans()
    for loss in (1.0, 3.0):
        window.add({"train/loss": torch.tensor(loss)})
    state = window.state_dict()  # one process: the sums over its one rank
    assert state["steps"] == 2 and state["over_ranks"] and float(state["sums"]["train/loss"]) == 4.0
    on_rank_0, on_rank_1 = RunningMeans(), RunningMeans()
    on_rank_0.load_state_dict(state, torch.device("cpu"), DistEnv(rank=0, world_size=2))
    on_rank_1.load_state_dict(state, torch.device("cpu"), DistEnv(rank=1, world_size=2))
    # the ranks' sums add up to the job's (the all-reduce of `means`), each step once
    assert float(on_rank_0.sums["train/loss"] + on_rank_1.sums["train/loss"]) == 4.0
    assert on_rank_0.steps == on_rank_1.steps == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
@pytest.mark.parametrize("launcher_gone", [True, False])
def test_a_rank_whose_launcher_is_already_gone_stops_instead_of_waiting(launcher_gone):
    # Before: torchrun killed while its ranks imported left them waiting ~30 min for a
    # rendezvous that would never come (the death signal was asked for too late). In a
    # child process: the death signal it asks for must not outlive the test.
    code = ("import os, sys\n"
            "from fixmatch.distributed import DistEnv, stop_with_the_launcher\n"
            "from fixmatch.errors import UserError\n"
            f"os.environ['FIXMATCH_LAUNCHER_PID'] = str(os.getppid() + {int(launcher_gone)})\n"
            "try:\n"
            "    stop_with_the_launcher(DistEnv(rank=1, local_rank=1, world_size=2))\n"
            "except UserError as error:\n"
            "    sys.exit(str(error))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    if launcher_gone:
        assert result.returncode == 1
        assert result.stderr.startswith("rank 1: torchrun, which started it, has stopped")
    else:
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("ending, status, stderr", [
    ("pass", 0, ""),
    ("sys.exit(75)", 75, ""),
    ("sys.exit('error: a message')", 1, "error: a message"),
    ("raise ValueError('a bug')", 1, "ValueError: a bug"),
])
def test_a_rank_ends_with_its_commands_status_after_pythons_exit_work(tmp_path, ending, status, stderr):
    # end_rank skips the interpreter's finalization (a gloo thread aborted 1 in ~200 finished
    # two-rank runs there); the exit status, Python's atexit work and buffered output stay.
    marker = tmp_path / "atexit-ran"
    code = ("import atexit, sys\n"
            "from fixmatch.distributed import end_rank\n"
            f"atexit.register(lambda: open({str(marker)!r}, 'w').close())\n"
            "def command():\n"
            "    sys.stdout.write('buffered output')\n"
            f"    {ending}\n"
            "end_rank(command)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == status
    assert result.stdout == "buffered output"
    assert (stderr in result.stderr) if stderr else result.stderr == ""
    assert marker.exists()


def test_a_collective_that_lost_another_rank_is_told_apart_and_a_resumable_stop(tmp_path):
    # Before: a rank killed mid-run gave the others a traceback, and metrics.json said failed.
    env = DistEnv(rank=0, world_size=2)
    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection "
                        "closed by peer [127.0.0.1]:4242")
    assert lost_rank_reason(gloo, env) == "Connection closed by peer"
    assert lost_rank_reason(gloo, DistEnv()) is None  # one process has no other rank
    assert lost_rank_reason(RuntimeError("CUDA out of memory"), env) is None
    writer = MetricWriter(tmp_path, 8, world_size=2)
    assert writer.stopped(RankLostError("another rank ..."), 3)["status"] == "interrupted"
    assert writer.stopped(RuntimeError("boom"), 3)["status"] == "failed"


def test_a_rank_lost_at_the_final_barrier_leaves_a_finished_run_finished(monkeypatch, caplog):
    # Before: the surviving rank's traceback, and exit 1 for a run metrics.json called completed.
    def lost_at_the_barrier(finished=False):
        raise RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer")

    monkeypatch.setattr(app, "destroy_process_group", lost_at_the_barrier)
    with caplog.at_level(logging.WARNING):
        app._leave_process_group(DistEnv(rank=0, world_size=2))
    assert ("another rank of this job stopped at the final barrier (Connection reset by peer); "
            "the run itself is complete") in caplog.text
    def fails_otherwise(finished=False):
        raise RuntimeError("something else")

    monkeypatch.setattr(app, "destroy_process_group", fails_otherwise)
    with pytest.raises(RuntimeError, match="something else"):  # not swallowed
        app._leave_process_group(DistEnv(rank=0, world_size=2))
