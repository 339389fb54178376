"""Runs that survive: exact resume after SIGKILL/SIGTERM, corrupt and unsafe checkpoints,
refused config changes, divergence and unwritable disks."""

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import CONF_DIR, compose_config, tiny_cifar_overrides
from fixmatch import preemption, resume
from fixmatch.app import run_experiment
from fixmatch.checkpoint import CheckpointError, load_checkpoint
from fixmatch.distributed import DistEnv
from fixmatch.errors import UserError
from fixmatch.folder_lock import FolderLock, is_held
from fixmatch.preemption import EXIT_CODE_PREEMPTED, StopRequest
from fixmatch.resume import experiment_differences
from fixmatch.trainer import Trainer

REPO = CONF_DIR.parent
TOTAL_STEPS = 24


def resume_overrides(root: Path, run_dir: Path, *extra: str) -> list:
    return tiny_cifar_overrides(
        root, f"trainer.total_steps={TOTAL_STEPS}", "trainer.eval_every_steps=6",
        "trainer.checkpoint_every_steps=2", "trainer.keep_checkpoints=3",
        f"hydra.run.dir={run_dir}", *extra)


def in_process(overrides: list, run_dir: Path) -> dict:
    return run_experiment(compose_config([o for o in overrides if not o.startswith("hydra.")]), run_dir)


def newest_step(run_dir: Path) -> int:
    steps = [int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.pt")]
    return max(steps, default=-1)


def start_and_signal(overrides: list, run_dir: Path, after_step: int, sig: int):
    """Start a run in a subprocess, send `sig` once a checkpoint past `after_step` exists."""
    process = subprocess.Popen([sys.executable, str(REPO / "run.py"), *overrides], cwd=run_dir.parent,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while newest_step(run_dir) < after_step and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def assert_same_run(resumed_dir: Path, reference_dir: Path) -> None:
    resumed = load_checkpoint(resumed_dir / "checkpoints" / "last.pt")
    reference = load_checkpoint(reference_dir / "checkpoints" / "last.pt")
    assert resumed["step"] == reference["step"] == TOTAL_STEPS
    for part in ["model", "ema"]:
        for key, tensor in reference[part].items():
            assert torch.equal(resumed[part][key], tensor), f"{part}.{key} differs"
    for index, buffers in reference["optimizer"]["state"].items():
        assert torch.equal(resumed["optimizer"]["state"][index]["momentum_buffer"], buffers["momentum_buffer"])
    assert resumed["labeled_indices"] == reference["labeled_indices"]
    lines = [(d / "metrics.jsonl").read_text().splitlines() for d in (resumed_dir, reference_dir)]
    assert lines[0] == lines[1]


@pytest.fixture(scope="module")
def reference_runs(tiny_cifar10, tmp_path_factory):
    """Uninterrupted runs, one per loader-worker count."""
    runs = {}
    for workers in (0, 2):
        run_dir = tmp_path_factory.mktemp("reference") / f"workers{workers}"
        in_process(resume_overrides(tiny_cifar10, run_dir, f"trainer.num_workers={workers}"), run_dir)
        runs[workers] = run_dir
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("first_workers,resume_workers,kill_after", [
    (0, 0, 1),  # once the first checkpoint is written, before any evaluation
    (2, 2, TOTAL_STEPS // 2 + 1),  # mid-run, between two evaluations
    (0, 2, TOTAL_STEPS - 4),  # late, with other workers on resume
])
def test_resume_after_sigkill_is_bitwise_identical(tiny_cifar10, tmp_path, reference_runs,
                                                   first_workers, resume_workers, kill_after):
    # Fixed kill steps (not random): a failure names its case and reproduces.
    run_dir = tmp_path / "run"
    overrides = resume_overrides(tiny_cifar10, run_dir, f"trainer.num_workers={first_workers}")
    code, stderr = start_and_signal(overrides, run_dir, kill_after, signal.SIGKILL)
    killed_at = newest_step(run_dir)
    assert code == -signal.SIGKILL and 0 < killed_at < TOTAL_STEPS, (code, killed_at, stderr)
    resumed = in_process(resume_overrides(tiny_cifar10, run_dir, f"trainer.num_workers={resume_workers}"),
                         run_dir)
    assert resumed["status"] == "completed"
    # Workers never change the numbers (per-sample seeds), so any reference will do.
    assert_same_run(run_dir, reference_runs[first_workers])


@pytest.mark.slow
def test_sigterm_checkpoints_marks_preempted_and_resumes_exactly(tiny_cifar10, tmp_path, reference_runs):
    run_dir = tmp_path / "run"
    overrides = resume_overrides(tiny_cifar10, run_dir, "trainer.num_workers=2")
    code, stderr = start_and_signal(overrides, run_dir, 4, signal.SIGTERM)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert code == EXIT_CODE_PREEMPTED, stderr
    assert summary["status"] == "preempted" and "preempted at step" in stderr
    assert newest_step(run_dir) == summary["step"] < TOTAL_STEPS  # saved at the step it stopped
    rerun = subprocess.run([sys.executable, str(REPO / "run.py"), *overrides], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert_same_run(run_dir, reference_runs[2])


def test_a_signal_during_the_last_step_leaves_a_completed_run(tiny_cifar10, tmp_path, monkeypatch):
    # Before: the run that had done every step re-saved and said preempted; under torchrun the
    # rank that got the signal saved alone, in collectives the finished ranks never joined.
    _stop_before_step(monkeypatch, TOTAL_STEPS)
    run_dir = tmp_path / "run"
    summary = in_process(resume_overrides(tiny_cifar10, run_dir), run_dir)
    assert (summary["status"], summary["step"]) == ("completed", TOTAL_STEPS)
    assert newest_step(run_dir) == TOTAL_STEPS


def _stop_before_step(monkeypatch, step: int, signals=(signal.SIGTERM,)) -> None:
    """Send `signals` to this process as the trainer starts `step` (then the run stops after it)."""
    advance = Trainer._advance

    def advance_with_a_signal(self, progress):
        if self.step == step - 1:
            for number in signals:
                os.kill(os.getpid(), number)
        advance(self, progress)

    monkeypatch.setattr(Trainer, "_advance", advance_with_a_signal)


def _scalars(path: Path, name: str) -> dict:
    events = EventAccumulator(str(path))
    events.Reload()
    return {event.step: event.value for event in events.Scalars(name)}


def test_two_signals_during_the_last_step_leave_a_completed_run(tiny_cifar10, tmp_path,
                                                               monkeypatch):
    # Before: the second (another signal) stopped at once, in the final evaluation and
    # checkpoint: "interrupted" at the last step, and a rerun redid the steps since the last
    # checkpoint.
    _stop_before_step(monkeypatch, TOTAL_STEPS, (signal.SIGTERM, signal.SIGINT))
    run_dir = tmp_path / "run"
    try:
        summary = in_process(resume_overrides(tiny_cifar10, run_dir), run_dir)
    except KeyboardInterrupt:  # what the second signal raised (it would stop pytest too)
        pytest.fail("the second signal stopped a run in its last step")
    assert (summary["status"], summary["step"]) == ("completed", TOTAL_STEPS)


def test_a_run_resumed_at_its_last_step_scores_its_final_weights(tiny_cifar10, tmp_path,
                                                                 monkeypatch):
    # Preempted at step 10 (no evaluation there), then given trainer.total_steps=10 as the
    # error for a shorter length advises. Before: "completed" with step 6's accuracy as final.
    run_dir = tmp_path / "run"
    _stop_before_step(monkeypatch, 10)
    assert in_process(resume_overrides(tiny_cifar10, run_dir), run_dir)["status"] == "preempted"
    monkeypatch.undo()
    summary = in_process(resume_overrides(tiny_cifar10, run_dir, "trainer.total_steps=10"), run_dir)
    assert (summary["status"], summary["step"], summary["num_evaluations"]) == ("completed", 10, 2)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [6, 10]
    assert records[1]["train/lr"] > 0  # the lr of step 10 (before: 0.0, no step taken since)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["history"][-1]["step"] == 10


def test_train_curves_after_a_resume_between_log_steps_are_the_uninterrupted_ones(
        tiny_cifar10, tmp_path, monkeypatch):
    # Logged every 4 steps, stopped at step 10: before, the step-12 point averaged steps
    # 11-12 only (the log window was not in the checkpoint).
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    in_process(resume_overrides(tiny_cifar10, reference, "trainer.log_every_steps=4"), reference)
    _stop_before_step(monkeypatch, 10)
    in_process(resume_overrides(tiny_cifar10, resumed, "trainer.log_every_steps=4"), resumed)
    monkeypatch.undo()
    in_process(resume_overrides(tiny_cifar10, resumed, "trainer.log_every_steps=4"), resumed)
    # The resumed process's own event file (TensorBoard orders files by name, and two files
    # of one process in one second may sort either way, so the folder is not read whole).
    first, second = sorted((resumed / "tensorboard").glob("events.*"),
                           key=lambda path: max(_scalars(path, "train/loss")))
    for name in ("train/loss", "train/loss_x", "train/mask_rate"):
        expected = _scalars(reference / "tensorboard", name)
        assert _scalars(second, name) == {step: value for step, value in expected.items()
                                          if step > 10}, name


def test_a_failure_of_rank_zeros_planning_stops_the_other_ranks_at_once(tmp_path, monkeypatch):
    # Before: only a UserError was broadcast; after any other error rank 0 exited and the
    # others waited in the broadcast until the process group's timeout.
    def fail(*args):
        raise PermissionError(13, "Permission denied")

    sent = []
    monkeypatch.setattr(resume, "_plan_holding_the_folder", fail)
    monkeypatch.setattr(resume, "broadcast_object", lambda value, env: sent.append(value) or value)
    with pytest.raises(PermissionError):
        resume.plan_on_rank_zero(tmp_path, "seed: 1\n", True, 2, DistEnv(rank=0, world_size=2))
    assert sent == [resume.RANK_ZERO_FAILED]
    monkeypatch.setattr(resume, "broadcast_object", lambda value, env: sent[0])  # what rank 1 hears
    with pytest.raises(UserError, match="rank 0 failed while choosing where the run writes"):
        resume.plan_on_rank_zero(tmp_path, "seed: 1\n", True, 2, DistEnv(rank=1, world_size=2))


def test_a_metrics_json_that_is_no_summary_means_the_run_is_redone_at_its_last_step(tmp_path):
    (tmp_path / "metrics.json").write_text("[1, 2]\n")  # valid JSON, no summary (was AttributeError)
    plan = resume.StartPlan(tmp_path, checkpoint={"step": 24})
    assert resume.finished_summary(plan, 24) is None


def test_second_signal_stops_at_once():
    with StopRequest() as stop:  # SIGUSR2: submitit's signal before a Slurm time limit
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.signal_name == "SIGUSR2"
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested and stop.signal_name == "SIGUSR1"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_a_signal_after_the_run_finished_is_let_go_until_the_handlers_are_restored():
    stop = StopRequest()
    stop.listen()
    stop.finish()
    os.kill(os.getpid(), signal.SIGUSR1)  # neither a request nor, the second time, a stop
    os.kill(os.getpid(), signal.SIGUSR1)
    assert not stop.requested
    stop.restore()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    # A process that only exits after the run: ignored from there (no default in between).
    stop = StopRequest()
    stop.listen()
    try:
        stop.restore(ignore=True)
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
    finally:
        for number in preemption.STOP_SIGNALS:
            signal.signal(number, signal.SIG_DFL if number != signal.SIGINT
                          else signal.default_int_handler)


def test_a_signal_during_the_teardown_after_the_last_step_leaves_the_run_completed(
        tiny_cifar10, tmp_path):
    # Before: the handlers went back to the defaults when the training loop ended, so under
    # torchrun a SIGTERM while rank 0 wrote the final checkpoint killed another rank waiting
    # at the final barrier, and the finished job was reported failed. In a child process: a
    # regression would kill the process it runs in.
    run_dir = tmp_path / "run"
    overrides = [o for o in resume_overrides(tiny_cifar10, run_dir) if not o.startswith("hydra.")]
    code = (
        "import os, signal, sys\n"
        f"sys.path.insert(0, {str(CONF_DIR.parent / 'tests')!r})\n"
        "from pathlib import Path\n"
        "from conftest import compose_config\n"
        "from fixmatch import app\n"
        "real = app.destroy_process_group\n"
        "def destroy_with_a_signal(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    real(*args, **kwargs)\n"
        "app.destroy_process_group = destroy_with_a_signal\n"
        f"summary = app.run_experiment(compose_config({overrides!r}), Path({str(run_dir)!r}))\n"
        "print(summary['status'])\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert (result.returncode, result.stdout.strip()) == (0, "completed"), result.stderr[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_a_ranks_copy_of_the_first_signal_is_that_request_not_a_second(monkeypatch):
    # Before: Slurm's SIGTERM to every process of a torchrun job, then torchrun's forwarded
    # copy, stopped the ranks at once without a checkpoint.
    clock = [100.0]
    monkeypatch.setattr(preemption.time, "monotonic", lambda: clock[0])
    with StopRequest(launched=True) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        clock[0] += 1.0
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher's copy: still one request
        assert stop.signal_name == "SIGTERM"
        clock[0] += preemption.LAUNCHER_COPY_WINDOW_S
        with pytest.raises(KeyboardInterrupt):  # the user's own second one, later
            os.kill(os.getpid(), signal.SIGTERM)
    with StopRequest() as stop:  # alone, a repeat is always the second request
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)


def test_signals_while_the_last_checkpoint_is_written_do_not_stop_it():
    # Before: the final save ran after the handlers were gone; a second SIGTERM killed the
    # process halfway through it, leaving no checkpoint of the stop and "running".
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        stop.saving = True
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal_name == "SIGTERM"


def test_repeated_hangups_ask_once():
    # SIGHUP is what a torchrun rank gets when torchrun dies, once per thread of torchrun.
    before = signal.getsignal(signal.SIGHUP)  # SIG_IGN under nohup, SIG_DFL otherwise
    with StopRequest() as stop:
        for _ in range(4):
            os.kill(os.getpid(), signal.SIGHUP)
        assert stop.signal_name == "SIGHUP"
        with pytest.raises(KeyboardInterrupt):  # another signal still stops at once
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGHUP) is before


def test_a_signal_the_process_ignores_stays_ignored_but_for_a_ranks_hangup():
    # Before: `nohup python run.py ... &` stopped (preempted) when its terminal closed, as
    # the handler replaced the SIG_IGN that nohup had set for SIGHUP.
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            assert not stop.requested
        with StopRequest(launched=True) as stop:  # a torchrun rank: its launcher died
            os.kill(os.getpid(), signal.SIGHUP)
            assert stop.signal_name == "SIGHUP"
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def short_run(root: Path, run_dir: Path, *extra: str) -> dict:
    overrides = tiny_cifar_overrides(root, "trainer.total_steps=6", "trainer.eval_every_steps=3",
                                     "trainer.checkpoint_every_steps=3", *extra)
    return run_experiment(compose_config(overrides), run_dir)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tiny_cifar10, tmp_path, caplog):
    run_dir = tmp_path / "run"
    short_run(tiny_cifar10, run_dir)
    newest = run_dir / "checkpoints" / "step_000000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a crash mid-copy
    with caplog.at_level(logging.WARNING):
        summary = short_run(tiny_cifar10, run_dir, "trainer.total_steps=9")
    assert "step_000000006.pt is unreadable" in caplog.text and "trying the one before it" in caplog.text
    assert summary["status"] == "completed" and summary["step"] == 9
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 9


def test_all_checkpoints_unreadable_fails_loudly_and_touches_nothing(tiny_cifar10, tmp_path,
                                                                     caplog):
    run_dir = tmp_path / "run"
    short_run(tiny_cifar10, run_dir)
    files = list((run_dir / "checkpoints").glob("step_*.pt"))
    for path in files:
        path.write_bytes(b"garbage")
    before = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "tensorboard" not in str(p)}
    with pytest.raises(CheckpointError, match="no readable checkpoint"), caplog.at_level(logging.WARNING):
        short_run(tiny_cifar10, run_dir)
    # the oldest has none before it (before: it too said "trying the one before it")
    assert caplog.text.count("trying the one before it") == len(files) - 1 > 0
    after = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "tensorboard" not in str(p)}
    assert after == before


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_is_refused_without_running_code(tmp_path):
    exploit = _Exploit()
    exploit.marker = tmp_path / "pwned"
    path = tmp_path / "step_000000001.pt"
    path.write_bytes(pickle.dumps({"format": "fixmatch-checkpoint-v1", "model": exploit}))
    with pytest.raises(CheckpointError, match="unreadable|unsafe"):
        load_checkpoint(path)
    assert not exploit.marker.exists()
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a fixmatch checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


@pytest.mark.parametrize("change,named", [
    ("ssl.num_labeled=20", "ssl.num_labeled (40 -> 20)"),
    ("model.widen_factor=2", "model.widen_factor"),
    ("seed=2", "seed"),
    ("ssl=supervised", "ssl.algorithm"),
])
def test_resume_refuses_another_experiment(tiny_cifar10, tmp_path, change, named):
    run_dir = tmp_path / "run"
    short_run(tiny_cifar10, run_dir)
    before = (run_dir / "metrics.json").read_text()
    with pytest.raises(UserError, match="cannot resume") as caught:
        short_run(tiny_cifar10, run_dir, change)
    assert named in str(caught.value)
    assert (run_dir / "metrics.json").read_text() == before


def test_resume_allows_a_longer_run_and_other_hardware_settings(tiny_cifar10, tmp_path):
    run_dir = tmp_path / "run"
    short_run(tiny_cifar10, run_dir)
    summary = short_run(tiny_cifar10, run_dir, "trainer.total_steps=9", "trainer.num_workers=1",
                        "trainer.log_every_steps=1", f"dataset.root={tiny_cifar10}/.")
    assert summary["status"] == "completed" and summary["step"] == 9
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 9]


def test_a_longer_run_warns_that_its_schedule_changed(tiny_cifar10, tmp_path, caplog):
    run_dir = tmp_path / "run"
    short_run(tiny_cifar10, run_dir)
    with caplog.at_level(logging.WARNING, logger="fixmatch.resume"):
        short_run(tiny_cifar10, run_dir, "trainer.total_steps=9")
    assert "trainer.total_steps 6 -> 9: from step 6 on, the learning rate follows the cosine " \
           "over 9 steps, so this run differs from a fresh 9-step run" in caplog.text
    # ... and metrics.json keeps it (for the results command), also after a later resume.
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["earlier_total_steps"] == [6] and summary["step"] == 9
    short_run(tiny_cifar10, run_dir, "trainer.total_steps=12")
    assert json.loads((run_dir / "metrics.json").read_text())["earlier_total_steps"] == [6, 9]


def test_an_interrupt_before_training_is_interrupted_not_failed_and_a_rerun_starts(
        tiny_cifar10, tmp_path, monkeypatch):
    # Before: Ctrl-C while the data loaded wrote status "failed", which results counted as a
    # mistake of the user's.
    run_dir = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("second stop signal (SIGINT)")

    with monkeypatch.context() as patch:
        patch.setattr("fixmatch.app.load_dataset", interrupted)
        with pytest.raises(KeyboardInterrupt):
            short_run(tiny_cifar10, run_dir)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] == 0
    assert summary["error"] == "KeyboardInterrupt: second stop signal (SIGINT)"
    assert short_run(tiny_cifar10, run_dir)["status"] == "completed"  # a new start, same folder


def test_resume_refuses_a_length_below_the_step_it_reached(tiny_cifar10, tmp_path):
    # Before: a stopped 6-step run resumed with trainer.total_steps=4 said "completed" at
    # step 6 of 4; a shorter length above the reached step is allowed (like a longer one).
    run_dir = tmp_path / "run"
    short_run(tiny_cifar10, run_dir)
    summary = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**summary, "status": "preempted"}))
    before = (run_dir / "metrics.json").read_text()
    with pytest.raises(UserError, match=r"it is at step 6, past trainer.total_steps=4; set "
                                        r"trainer.total_steps to at least 6"):
        short_run(tiny_cifar10, run_dir, "trainer.total_steps=4")
    assert (run_dir / "metrics.json").read_text() == before
    assert short_run(tiny_cifar10, run_dir, "trainer.total_steps=7")["step"] == 7


def test_a_completed_run_is_not_called_done_for_a_shorter_length(tiny_cifar10, tmp_path):
    # Before: "already completed 6 steps; nothing to do" for trainer.total_steps=4, and the
    # 6-step results stood for a 4-step run.
    run_dir = tmp_path / "run"
    short_run(tiny_cifar10, run_dir)
    before = (run_dir / "metrics.json").read_text()
    with pytest.raises(UserError, match=r"holds a run completed at step 6, past "
                                        r"trainer.total_steps=4; its results are not those of a "
                                        r"4-step run: use another hydra.run.dir"):
        short_run(tiny_cifar10, run_dir, "trainer.total_steps=4")
    shutil.rmtree(run_dir / "checkpoints")  # the same once its checkpoints are deleted
    with pytest.raises(UserError, match="holds a run completed at step 6, past"):
        short_run(tiny_cifar10, run_dir, "trainer.total_steps=4")
    assert (run_dir / "metrics.json").read_text() == before


def test_a_folder_another_process_trains_in_is_refused(tiny_cifar10, tmp_path):
    # Before: a rerun (or a requeue) while the first job still trained resumed from its
    # last checkpoint beside it; both appended to metrics.jsonl (steps out of order, twice).
    run_dir = tmp_path / "run"
    short_run(tiny_cifar10, run_dir, "trainer.total_steps=3")
    before = (run_dir / "metrics.jsonl").read_bytes()
    held = FolderLock(run_dir).acquire()  # flock: another open of the folder is another holder
    try:
        with pytest.raises(UserError, match=r"another process is training in .*run right now"):
            short_run(tiny_cifar10, run_dir)
        with pytest.raises(UserError, match="another process is training"):
            short_run(tiny_cifar10, run_dir, "trainer.resume=false")  # decided in the folder
    finally:
        held.release()
    assert (run_dir / "metrics.jsonl").read_bytes() == before
    assert short_run(tiny_cifar10, run_dir)["step"] == 6  # released when the holder is done


def test_a_forked_child_does_not_keep_the_folder_held(tmp_path):
    # Before: loader workers (forked) inherited the lock, so for seconds after the trainer
    # was SIGKILLed its folder still looked held: the rerun was refused, results said running.
    held = FolderLock(tmp_path).acquire()
    started, finish = os.pipe(), os.pipe()
    child = os.fork()
    if child == 0:  # a worker that outlives its parent's lock
        os.write(started[1], b"x")  # the fork hooks have run by now
        os.read(finish[0], 1)
        os._exit(0)
    try:
        os.read(started[0], 1)
        held.release()  # as the kernel does when the trainer dies
        assert is_held(tmp_path) is False
    finally:
        os.write(finish[1], b"x")
        os.waitpid(child, 0)
        for fd in (*started, *finish):
            os.close(fd)


def test_resume_false_starts_fresh_in_a_new_folder(tiny_cifar10, tmp_path):
    run_dir = tmp_path / "run"
    short_run(tiny_cifar10, run_dir)
    old = (run_dir / "checkpoints" / "step_000000006.pt").read_bytes()
    summary = short_run(tiny_cifar10, run_dir, "trainer.resume=false")
    assert summary["step"] == 6
    assert (tmp_path / "run_2" / "checkpoints" / "last.pt").exists()
    assert (run_dir / "checkpoints" / "step_000000006.pt").read_bytes() == old


def test_keeps_only_the_newest_checkpoints(tiny_cifar10, tmp_path):
    run_dir = tmp_path / "run"
    short_run(tiny_cifar10, run_dir, "trainer.checkpoint_every_steps=1", "trainer.keep_checkpoints=2")
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["last.pt", "step_000000005.pt", "step_000000006.pt"]
    assert os.readlink(run_dir / "checkpoints" / "last.pt") == "step_000000006.pt"


def test_divergence_stops_with_one_line_and_keeps_good_checkpoints(tiny_cifar10, tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_cifar_overrides(tiny_cifar10, "optim.lr=1e30", "trainer.total_steps=6",
                                     "trainer.checkpoint_every_steps=1", "trainer.log_every_steps=1",
                                     f"hydra.run.dir={run_dir}")
    result = subprocess.run([sys.executable, str(REPO / "run.py"), *overrides], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "training diverged" in lines[0] and "step" in lines[0], lines
    # fp32 already (the CPU): only the learning rate is advice (before: also precision=fp32)
    assert lines[0].endswith("; lower optim.lr") and "precision" not in lines[0], lines
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "failed" and "diverged" in summary["error"]
    assert "failed at step" in (run_dir / "run.log").read_text().strip().splitlines()[-1]
    for path in (run_dir / "checkpoints").glob("step_*.pt"):
        weights = load_checkpoint(path)["model"]
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_full_disk_keeps_the_previous_checkpoint(tiny_cifar10, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    short_run(tiny_cifar10, run_dir)
    good = (run_dir / "checkpoints" / "step_000000006.pt").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError, match="No space left on device.*step_000000006.pt is intact"):
        short_run(tiny_cifar10, run_dir, "trainer.total_steps=9")
    assert (run_dir / "checkpoints" / "step_000000006.pt").read_bytes() == good
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_unwritable_output_folder_is_one_clear_error(tiny_cifar10, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write to the output folder"):
        short_run(tiny_cifar10, blocker / "run")


def test_a_key_added_after_the_run_started_counts_as_its_default():
    current = OmegaConf.to_yaml(compose_config([]), resolve=True)
    older = yaml.safe_load(current)
    del older["ssl"]["lambda_u"]  # as if the run predates the key (default 1.0)
    assert experiment_differences(yaml.safe_dump(older), current) == []
    changed = OmegaConf.to_yaml(compose_config(["ssl.lambda_u=2.0"]), resolve=True)
    assert experiment_differences(yaml.safe_dump(older), changed) == ["ssl.lambda_u (1.0 -> 2.0)"]


def test_resume_with_data_of_other_classes_is_refused_before_writing(tiny_cifar10, tmp_path):
    # dataset.root may change on resume; before, a root whose classes differ resumed silently
    # (same class count) or failed with "the checkpoint does not fit this model/optimiser"
    # (another count), after rewriting split.json and normalization.json for the wrong data.
    run_dir = tmp_path / "run"
    short_run(tiny_cifar10, run_dir, "trainer.total_steps=3")
    other = tmp_path / "other"
    shutil.copytree(tiny_cifar10, other)
    names = [f"class_{i}" for i in range(10)]
    (other / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    before = {name: (run_dir / name).read_bytes() for name in ("split.json", "normalization.json")}
    with pytest.raises(CheckpointError, match=r"trained on the classes \['airplane'.*has \['class_0'"):
        short_run(tiny_cifar10, run_dir, f"dataset.root={other}")
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    assert short_run(tiny_cifar10, run_dir)["step"] == 6  # the run's own data still resumes


def test_results_without_a_checkpoint_are_never_written_over_by_another_experiment(tiny_cifar10, tmp_path):
    # Before: "has metrics but no checkpoint; starting the run over" for any config, also
    # another experiment's, and trainer.resume=false overwrote the folder in place.
    run_dir = tmp_path / "run"
    short_run(tiny_cifar10, run_dir)
    shutil.rmtree(run_dir / "checkpoints")
    summary = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**summary, "status": "preempted"}))
    before = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}
    with pytest.raises(UserError, match=r"holds a run's results \(2 evaluations in metrics.jsonl\) "
                                        r"of another experiment \(the config differs in ssl.threshold \(0.95 -> 0.5\)\) "
                                        r"but no checkpoint .* trainer.resume=false starts fresh"):
        short_run(tiny_cifar10, run_dir, "ssl.threshold=0.5")
    assert short_run(tiny_cifar10, run_dir, "trainer.resume=false")["step"] == 6
    assert (tmp_path / "run_2" / "metrics.json").exists()
    assert {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()} == before
    foreign = tmp_path / "foreign"  # another tool's files under fixmatch's names
    foreign.mkdir()
    (foreign / "metrics.json").write_text('{"accuracy": 0.9}')
    with pytest.raises(UserError, match=r"holds a metrics.json \(status None\) of an unknown "
                                        r"experiment \(its config_resolved.yaml is missing or "
                                        r"unreadable\) but no checkpoint"):
        short_run(tiny_cifar10, foreign)
    assert (foreign / "metrics.json").read_text() == '{"accuracy": 0.9}'
    # The same experiment starts over: runs are deterministic, so nothing is lost.
    assert short_run(tiny_cifar10, run_dir)["status"] == "completed"


def test_a_completed_run_whose_checkpoints_were_deleted_is_never_overwritten(tiny_cifar10, tmp_path):
    # Checkpoints deleted to save space, then the same command (or a sweep adding seeds) is
    # rerun. Before: "has metrics but no checkpoint; starting the run over" retrained it, and
    # another experiment in that folder replaced its results without a word.
    run_dir = tmp_path / "run"
    short_run(tiny_cifar10, run_dir)
    shutil.rmtree(run_dir / "checkpoints")
    files = ("metrics.json", "metrics.jsonl", "config_resolved.yaml", "split.json")
    before = {name: (run_dir / name).read_bytes() for name in files}
    summary = short_run(tiny_cifar10, run_dir)
    assert summary.pop("run_dir") == str(run_dir)
    assert summary == json.loads(before["metrics.json"]) and summary["status"] == "completed"
    for change, message in [("ssl.num_labeled=20", r"another experiment .*ssl.num_labeled \(40 -> 20\)"),
                            ("trainer.total_steps=9", "cannot continue to trainer.total_steps=9")]:
        with pytest.raises(UserError, match=message):
            short_run(tiny_cifar10, run_dir, change)
    assert {name: (run_dir / name).read_bytes() for name in files} == before
    assert not (run_dir / "checkpoints").exists()
    fresh = short_run(tiny_cifar10, run_dir, "ssl.num_labeled=20", "trainer.resume=false")
    assert fresh["status"] == "completed" and (tmp_path / "run_2" / "checkpoints").is_dir()
    assert {name: (run_dir / name).read_bytes() for name in files} == before
