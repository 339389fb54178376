"""End to end: tiny runs write every output file, are reproducible and really learn."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config, tiny_cifar_overrides
from fixmatch.app import run_experiment
from fixmatch.checkpoint import load_checkpoint
from fixmatch.errors import UserError

REPO = CONF_DIR.parent
TRAIN_KEYS = {"step", "train/lr", "train/loss", "train/loss_x", "train/loss_u", "train/mask_rate",
              "train/pseudo_label_acc"}
EVAL_KEYS = {"eval/top1_ema", "eval/top5_ema", "eval/top1_raw", "eval/loss_ema"}


def test_tiny_cifar_run_writes_every_output_file(tiny_cifar10, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_config(tiny_cifar_overrides(tiny_cifar10))
    figure = run_experiment(cfg, run_dir)["top1_ema_median_last20"]

    resolved = OmegaConf.load(run_dir / "config_resolved.yaml")
    assert resolved.ssl.split_seed == 1 and resolved.dataset.name == "cifar10"

    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["indices"]) == 40 and split["num_per_class"] == [4] * 10
    assert split["seed"] == 1 and len(split["sha256"]) == 64

    def strict(constant):  # NaN and Infinity are not JSON: other languages' parsers refuse them
        raise ValueError(f"{constant} in metrics.jsonl")

    lines = [json.loads(line, parse_constant=strict)
             for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [3, 6]
    for line in lines:
        assert TRAIN_KEYS | EVAL_KEYS <= set(line), set(line)
    # No confident pseudo-label in these first steps: their accuracy is undefined, null.
    assert [line["train/pseudo_label_acc"] for line in lines] == [None, None]

    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed"
    assert summary["step"] == summary["total_steps"] == 6
    assert summary["top1_ema_final"] == lines[-1]["eval/top1_ema"]
    assert summary["top1_ema_median_last20"] == figure
    for key in ["top1_ema_best", "wall_time_s"]:
        assert key in summary

    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["step"] == 6
    assert checkpoint["labeled_indices"] == split["indices"]
    for key in ["model", "ema", "optimizer", "schedule", "config_yaml", "class_names"]:
        assert key in checkpoint


def test_same_seed_same_weights_other_seed_other_weights(tiny_cifar10, tmp_path):
    def final_weights(name, *extra):
        cfg = compose_config(tiny_cifar_overrides(tiny_cifar10, "trainer.total_steps=3", *extra))
        run_experiment(cfg, tmp_path / name)
        return load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"]

    first, again, other = final_weights("a"), final_weights("b"), final_weights("c", "seed=2")
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_supervised_run_uses_the_same_split(tiny_cifar10, tmp_path):
    run_experiment(compose_config(tiny_cifar_overrides(tiny_cifar10)), tmp_path / "fixmatch")
    run_experiment(compose_config(tiny_cifar_overrides(tiny_cifar10, "ssl=supervised")),
                   tmp_path / "supervised")
    splits = [json.loads((tmp_path / name / "split.json").read_text())
              for name in ["fixmatch", "supervised"]]
    assert splits[0] == splits[1]
    line = json.loads((tmp_path / "supervised" / "metrics.jsonl").read_text().splitlines()[-1])
    assert EVAL_KEYS | {"train/loss_x"} <= set(line)


@pytest.mark.slow
def test_quickstart_fixmatch_really_learns(tmp_path):
    """300 steps of the quickstart: far above chance (10 %) with 4 labels per class."""
    cfg = compose_config(["experiment=quickstart", "trainer.total_steps=300",
                          "trainer.eval_every_steps=100"])
    figure = run_experiment(cfg, tmp_path / "run")["top1_ema_median_last20"]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["eval/top1_ema"] > 75.0, lines[-1]
    assert lines[-1]["train/mask_rate"] > 0.3  # pseudo-labels are being used
    assert lines[-1]["train/pseudo_label_acc"] > 0.8
    assert figure > 60.0


def test_fp16_on_cpu_and_cuda_without_gpu_are_refused(tiny_cifar10, tmp_path):
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        run_experiment(compose_config(tiny_cifar_overrides(
            tiny_cifar10, "trainer.precision=fp16")), tmp_path / "a")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            run_experiment(compose_config(tiny_cifar_overrides(
                tiny_cifar10, "trainer.device=cuda")), tmp_path / "b")


def test_a_run_without_ema_reports_the_live_model_as_such(tiny_cifar10, tmp_path, caplog):
    # Before: its log said "top-1 10.00 % (EMA), 10.00 % (raw)" with no EMA in the run.
    cfg = compose_config(tiny_cifar_overrides(tiny_cifar10, "optim.ema_enabled=false"))
    with caplog.at_level("INFO", logger="fixmatch"):
        run_experiment(cfg, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(line["eval/top1_ema"] == line["eval/top1_raw"] for line in lines)
    assert "(the live model; no EMA)" in caplog.text and "(EMA)" not in caplog.text
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["ema"] is None


def test_bf16_autocast_trains_on_cpu(tiny_cifar10, tmp_path):
    cfg = compose_config(tiny_cifar_overrides(tiny_cifar10, "trainer.precision=bf16",
                                              "trainer.total_steps=3"))
    run_experiment(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"


def run_cli(*overrides: str, cwd: Path):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def files_of(run_dir: Path) -> dict:
    return {str(path.relative_to(run_dir)): path.read_bytes()
            for path in sorted(run_dir.rglob("*")) if path.is_file()}


def test_cli_reruns_leave_a_completed_run_byte_for_byte(tiny_cifar10, tmp_path):
    # Before: Hydra appended every later start's log to run.log and rewrote .hydra/ (the
    # record of the command) before the run decided it would not touch the folder; with
    # trainer.resume=false the new run's log even went into the old run's run.log.
    overrides = tiny_cifar_overrides(tiny_cifar10, "trainer.total_steps=2",
                                     "trainer.eval_every_steps=2", f"hydra.run.dir={tmp_path}/run")
    first = run_cli(*overrides, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "run"
    assert "completed at step 2" in (run / "run.log").read_text()
    assert "- trainer.total_steps=2" in (run / ".hydra" / "overrides.yaml").read_text()
    before = files_of(run)
    again = run_cli(*overrides, cwd=tmp_path)
    assert again.returncode == 0 and "already completed 2 steps" in again.stdout, again.stderr
    refused = run_cli(*overrides, "ssl.threshold=0.5", cwd=tmp_path)
    assert refused.returncode == 2 and "cannot resume" in refused.stderr
    fresh = run_cli(*overrides, "trainer.resume=false", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert files_of(run) == before
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
    log = (tmp_path / "run_2" / "run.log").read_text()
    assert "starting fresh in" in log and "completed at step 2" in log
    assert "- trainer.resume=false" in (tmp_path / "run_2" / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.parametrize("seconds", [0.5, 1.0])
def test_ctrl_c_while_the_command_starts_is_one_line(tiny_cifar10, tmp_path, seconds):
    # Before: Ctrl-C while torch imported or Hydra composed printed a traceback. Whichever
    # phase the signal meets (imports, composition, data loading), the answer is one line.
    process = subprocess.Popen(
        [sys.executable, str(REPO / "run.py"),
         *tiny_cifar_overrides(tiny_cifar10, f"hydra.run.dir={tmp_path}/run")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: stopped"), lines


def test_a_run_started_with_ctrl_c_ignored_keeps_ignoring_it(tiny_cifar10, tmp_path):
    # A script's background job (`python run.py ... &`) inherits SIGINT ignored: the start's
    # one-line handler must not take it over, nor the run after it.
    process = subprocess.Popen(
        [sys.executable, str(REPO / "run.py"),
         *tiny_cifar_overrides(tiny_cifar10, f"hydra.run.dir={tmp_path}/run")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    for _ in range(3):
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_mistake_found_before_the_run_wrote_anything_leaves_no_empty_folder(tiny_cifar10, tmp_path):
    # Before: Hydra's freshly made run folder stayed behind, empty.
    result = run_cli(*tiny_cifar_overrides(tiny_cifar10, "trainer.device=cuda",
                                           f"hydra.run.dir={tmp_path}/run"), cwd=tmp_path)
    assert result.returncode == 2 and "no CUDA device" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_users_own_empty_folder_survives_a_mistake(tiny_cifar10, tmp_path):
    # Before: hydra.run.dir=<an empty folder of the user's> was removed with the mistake.
    (tmp_path / "mine").mkdir()
    result = run_cli(*tiny_cifar_overrides(tiny_cifar10, "trainer.device=cuda",
                                           f"hydra.run.dir={tmp_path}/mine"), cwd=tmp_path)
    assert result.returncode == 2 and "no CUDA device" in result.stderr
    assert (tmp_path / "mine").is_dir()


def test_a_sweep_under_torchrun_is_one_line_not_a_hang(tmp_path):
    # Before: the second job of `torchrun ... run.py -m seed=1,2` waited forever.
    result = subprocess.run([sys.executable, str(REPO / "run.py"), "-m", "seed=1,2"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "WORLD_SIZE": "2", "RANK": "0"})
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: a sweep (-m) cannot run under torchrun: one torchrun "
                                     "runs one experiment; start one torchrun per job (e.g. a "
                                     "shell loop over the values)")
    assert not any(tmp_path.iterdir())


def test_a_sweep_runs_every_job_then_exits_2_naming_the_failed_ones(tiny_cifar10, tmp_path):
    # Before: the sweep exited 0 when a job stopped on a mistake. The mistake here is one
    # only a job finds: its folder holds a run of another experiment (ssl.threshold=0.8).
    overrides = tiny_cifar_overrides(tiny_cifar10, "trainer.total_steps=2",
                                     "trainer.eval_every_steps=2")
    other = run_cli(*overrides, "ssl.threshold=0.8",
                    f"hydra.run.dir={tmp_path}/sweep/cifar10/40/fixmatch/1", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    result = run_cli("-m", *overrides, "seed=1,2", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and "ssl.threshold (0.8 -> 0.95)" in lines[0], lines
    assert lines[1].startswith("error: 1 of 2 sweep jobs stopped on a mistake")
    assert "folder sweep/cifar10/40/fixmatch/1" in lines[1] and "hydra.sweep.dir=sweep " in lines[1]
    job = tmp_path / "sweep" / "cifar10" / "40" / "fixmatch"
    assert json.loads((job / "2" / "metrics.json").read_text())["status"] == "completed"


def test_a_value_no_run_can_use_leaves_no_folder_not_even_a_parent(tmp_path):
    # Before: Hydra had made outputs/<date>/<time> (or a/b/c) before the run refused the
    # value, and its empty parents stayed.
    for overrides in (["ssl.threshold=1.5"], ["model.depth=11", f"hydra.run.dir={tmp_path}/a/b/c"],
                      ["dataset.std=[0.2,0.2,0.2]"]):  # digits has one channel
        result = run_cli("experiment=quickstart", *overrides, cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not any(tmp_path.iterdir()), list(tmp_path.rglob("*"))


def test_a_sweep_with_a_label_count_its_data_cannot_give_stops_before_any_job(tiny_cifar10, tmp_path):
    # Before: the jobs of 40 and 250 labels trained first (hours, on real data); the job of
    # 45 (not a multiple of the 10 classes) stopped only then.
    overrides = [o for o in tiny_cifar_overrides(tiny_cifar10) if not o.startswith("ssl.num_labeled")]
    result = run_cli("-m", *overrides, "ssl.num_labeled=40,45", "seed=1,2",
                     "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ssl.num_labeled=45 must be"), lines
    assert not (tmp_path / "sweep").exists()


def test_a_sweep_rerun_with_a_changed_key_names_the_sweep_settings(tiny_cifar10, tmp_path):
    # Before: the refusal said "use another hydra.run.dir (ignored by a sweep), or
    # trainer.resume=false" (which retrains every job of the sweep into copies).
    overrides = [*tiny_cifar_overrides(tiny_cifar10, "trainer.total_steps=2",
                                       "trainer.eval_every_steps=2"), "hydra.sweep.dir=sweep"]
    assert run_cli("-m", *overrides, "seed=1", cwd=tmp_path).returncode == 0
    result = run_cli("-m", *overrides, "seed=1", "ssl.threshold=0.8", cwd=tmp_path)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[0]
    assert "in ssl.threshold (0.95 -> 0.8)" in error and "hydra.run.dir" not in error, error
    assert "resume=false" not in error
    assert "hydra.sweep.dir" in error and "name the key that changed in hydra.sweep.subdir" in error


# Mistakes in the data (found as it loads) leave a failed run that results count; values no
# run can use are refused before the run's folder is set up, which leaves no folder.
@pytest.mark.parametrize("overrides,message,leaves_a_run", [
    ({"dataset.root": "{missing}"}, "no dataset files in", True),
    ({"ssl.num_labeled": "45"}, "multiple of the 10 classes", True),
    ({"ssl.num_labeled": "400"}, "needs 40 labeled images", True),
    ({"model.depth": "11"}, "model.depth=11", False),
    ({"ssl.randaugment_variant": "strong"}, "randaugment_variant", False),
    ({"trainer.total_steps": "0"}, "total_steps=0", False),
    ({"seed": "-1"}, "seed=-1 must not be negative", False),
    # before: accepted, then "training diverged ... lower optim.lr"
    ({"dataset.mean": "[0.5,0.5,0.5]", "dataset.std": "[0,0,0]"}, "every value must be positive", False),
])
def test_bad_inputs_fail_with_one_line(tiny_cifar10, tmp_path, overrides, message, leaves_a_run):
    settings = {"dataset.root": str(tiny_cifar10), "dataset.download": "false",
                "ssl.num_labeled": "40", "trainer.total_steps": "2", "trainer.num_workers": "0",
                "hydra.run.dir": str(tmp_path / "run")}
    settings.update({key: value.format(missing=tmp_path / "nowhere") for key, value in overrides.items()})
    result = run_cli(*(f"{key}={value}" for key, value in settings.items()), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in result.stdout + result.stderr
    if not leaves_a_run:
        # Before: a "failed" run folder, which the results command counted.
        assert not (tmp_path / "run").exists()
        return
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["status"] == "failed" and message in summary["error"]
    assert (tmp_path / "run" / "config_resolved.yaml").exists()  # the results command finds it
    # Before: run.log ended with the start's lines; why it stopped was on the console only.
    last_line = (tmp_path / "run" / "run.log").read_text().strip().splitlines()[-1]
    assert "stopped before training" in last_line and message in last_line
