"""The results command: run folders -> table rows, formats, merging, errors, a real sweep."""

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config
from fixmatch.curves import runs_per_step, mean_band, read_curve
from fixmatch.folder_lock import FolderLock
from fixmatch.config import register_configs
from fixmatch.results import main
from fixmatch.results_rows import build_rows
from fixmatch.results_runs import find_runs
from fixmatch.results_table import format_table
from fixmatch.results_warnings import cell_warnings, protocol_warnings

REPO = CONF_DIR.parent
CIFAR10_40 = ["ssl.num_labeled=40"]


def make_run(folder: Path, overrides, metrics=None, curve=None) -> Path:
    """A run folder as app.py leaves it: the resolved config, and metrics files if given."""
    folder.mkdir(parents=True)
    cfg = compose_config(list(overrides))
    (folder / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if curve is not None:
        lines = [json.dumps({"step": step, "eval/top1_ema": value}) for step, value in curve]
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def done(figure: float, final: float) -> dict:
    return {"status": "completed", "step": 8, "total_steps": 8, "num_evaluations": 4,
            "top1_ema_final": final, "top1_ema_median_last20": figure,
            "top1_ema_best": max(figure, final), "wall_time_s": 1.0}


def failed() -> dict:
    return {"status": "failed", "step": 0, "total_steps": 8, "num_evaluations": 0,
            "top1_ema_final": None, "top1_ema_median_last20": None, "top1_ema_best": None,
            "wall_time_s": 0.0, "error": "UserError: boom"}


@pytest.fixture
def sweep(tmp_path) -> Iterator[Path]:
    """CIFAR-10/40: seeds 1-3 done (80, 85, 90), 4 failed, 5 running, 6 without metrics;
    CIFAR-10/250 supervised: one run done."""
    root = tmp_path / "sweep"
    for seed, figure, final in [(1, 80.0, 81.0), (2, 85.0, 86.0), (3, 90.0, 88.0)]:
        make_run(root / f"a{seed}", [*CIFAR10_40, f"seed={seed}"], done(figure, final))
    make_run(root / "deep" / "b4", [*CIFAR10_40, "seed=4"], failed())
    make_run(root / "b5", [*CIFAR10_40, "seed=5"], {**done(50.0, 50.0), "status": "running"})
    make_run(root / "b6", [*CIFAR10_40, "seed=6"])
    make_run(root / "c1", ["ssl.num_labeled=250", "ssl=supervised"], done(70.0, 71.5))
    training = FolderLock(root / "b5").acquire()  # as the process training there holds it
    yield root
    training.release()


def test_a_running_run_that_no_process_holds_was_killed(sweep):
    make_run(sweep / "b7", [*CIFAR10_40, "seed=7"], {**done(50.0, 50.0), "status": "running"})
    fixmatch, _ = build_rows(find_runs([str(sweep)]))
    assert fixmatch.status_text() == "3/7 done, 1 running, 1 starting, 1 killed, 1 failed"


def test_rows_hold_hand_computed_mean_and_std(sweep):
    fixmatch, supervised = build_rows(find_runs([str(sweep)]))

    assert fixmatch.key == ("cifar10", "WRN-28-2", "fixmatch", 40)
    assert len(fixmatch.runs) == 6 and fixmatch.done == 3
    assert fixmatch.status_text() == "3/6 done, 1 running, 1 starting, 1 failed"
    assert fixmatch.accuracy.n == 3
    assert fixmatch.accuracy.mean == pytest.approx(85.0)
    assert fixmatch.accuracy.std == pytest.approx(5.0)  # sample std: sqrt((25 + 0 + 25) / 2)
    assert fixmatch.final.mean == pytest.approx(85.0)
    assert fixmatch.final.std == pytest.approx(math.sqrt((16 + 1 + 9) / 2))
    assert fixmatch.accuracy.error_rate().mean == pytest.approx(15.0)
    assert (fixmatch.paper.accuracy_mean, fixmatch.paper.error_mean) == (86.19, 13.81)

    assert supervised.key == ("cifar10", "WRN-28-2", "supervised", 250)
    assert supervised.accuracy.n == 1 and supervised.accuracy.std is None
    assert supervised.paper is None  # the paper's figures are FixMatch's

    table = format_table([fixmatch, supervised]).splitlines()
    assert table[2] == ("| cifar10 | WRN-28-2 | fixmatch | 40 | 3/6 done, 1 running, 1 starting, "
                        "1 failed | 85.00 ± 5.00 | 86.19 ± 3.37 | 85.00 ± 3.61 | 15.00 ± 5.00 "
                        "| 13.81 ± 3.37 |")
    assert table[3] == ("| cifar10 | WRN-28-2 | supervised | 250 | 1/1 done | 70.00 ± – | – "
                        "| 71.50 ± – | 30.00 ± – | – |")



def test_randaugment_and_ctaugment_runs_get_rows_and_paper_figures_of_their_own(tmp_path):
    for seed, figure in [(1, 80.0), (2, 82.0)]:
        make_run(tmp_path / "ra" / str(seed), [*CIFAR10_40, f"seed={seed}"], done(figure, figure))
        make_run(tmp_path / "cta" / str(seed), ["experiment=cifar10_40_cta", f"seed={seed}"],
                 done(figure + 5, figure))
    randaugment, ctaugment = build_rows(find_runs([str(tmp_path)]))
    assert randaugment.key == ("cifar10", "WRN-28-2", "fixmatch", 40)
    assert ctaugment.key == ("cifar10", "WRN-28-2", "fixmatch_cta", 40)
    assert (randaugment.accuracy.mean, ctaugment.accuracy.mean) == (81.0, 86.0)
    assert (randaugment.paper.error_mean, randaugment.paper.error_std) == (13.81, 3.37)
    assert (ctaugment.paper.error_mean, ctaugment.paper.error_std) == (11.39, 3.35)
    assert not cell_warnings([randaugment, ctaugment])


@pytest.mark.parametrize("overrides,folder", [
    (["experiment=cifar10_40", "seed=3"], "cifar10/40/fixmatch/3"),
    (["experiment=cifar10_40_cta", "seed=3"], "cifar10/40/fixmatch_cta/3"),
    (["experiment=cifar10_40_cta", "ssl=supervised", "seed=3"], "cifar10/40/supervised/3"),
])
def test_sweep_job_folders_keep_the_strong_augmentations_apart(overrides, folder):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # what ${hydra:runtime.choices.ssl} reads
    try:
        assert cfg.hydra.sweep.subdir == folder
    finally:
        HydraConfig.instance().cfg = None

def test_csv_markdown_and_latex_parse(sweep):
    rows = build_rows(find_runs([str(sweep)]))

    records = list(csv.DictReader(io.StringIO(format_table(rows, style="csv"))))
    assert [record["num_labeled"] for record in records] == ["40", "250"]
    assert (records[0]["runs"], records[0]["done"]) == ("6", "3")
    assert float(records[0]["accuracy_mean"]) == 85.0 and float(records[0]["accuracy_std"]) == 5.0
    assert float(records[0]["error_rate_mean"]) == 15.0
    assert float(records[0]["paper_error_rate_mean"]) == 13.81
    assert records[1]["accuracy_std"] == "" and records[1]["paper_accuracy_mean"] == ""

    markdown = format_table(rows, style="markdown").splitlines()
    assert len(markdown) == 4 and set(markdown[1].replace(" ", "")) == {"|", "-"}
    assert len({line.count("|") for line in markdown}) == 1

    latex = format_table(rows, style="latex").splitlines()
    assert latex[0].startswith("\\begin{tabular}{") and latex[-1] == "\\end{tabular}"
    body = [line for line in latex if line.endswith("\\\\")]
    assert len(body) == 3 and len({line.count(" & ") for line in body}) == 1
    assert "85.00 $\\pm$ 5.00" in latex[4] and "accuracy (\\%)" in latex[2]


def test_by_splits_rows_and_mixed_cells_are_flagged(tmp_path, capsys):
    for threshold, figure in [(0.8, 60.0), (0.95, 70.0)]:
        for seed in [1, 2]:
            make_run(tmp_path / f"t{threshold}" / str(seed),
                     [*CIFAR10_40, f"seed={seed}", f"ssl.threshold={threshold}"],
                     done(figure + seed, figure))

    assert main([str(tmp_path)]) == 0
    output = capsys.readouterr()
    assert "4/4 done" in output.out and "differ in ssl.threshold" in output.err

    rows = build_rows(find_runs([str(tmp_path)]), by=["ssl.threshold"])
    assert [row.key[-1] for row in rows] == [0.8, 0.95]
    assert [row.accuracy.mean for row in rows] == [61.5, 71.5]
    assert main([str(tmp_path), "--by", "ssl.threshold"]) == 0
    output = capsys.readouterr()
    # Split, the rows' runs agree; only the 0.8 row is off the paper's protocol (its paper
    # cells are marked).
    assert "ssl.threshold" in output.out.splitlines()[0]
    assert output.err == ("warning: cifar10 WRN-28-2 fixmatch 40 labels ssl.threshold=0.8: not "
                          "the paper's protocol (ssl.threshold 0.8 vs 0.95); its paper columns "
                          "are the paper's runs, for reference\n")
    assert "86.19 ± 3.37* |" in output.out.splitlines()[2]
    assert "86.19 ± 3.37 |" in output.out.splitlines()[3]


def test_two_sweep_folders_merge(tmp_path, capsys):
    make_run(tmp_path / "first" / "1", [*CIFAR10_40, "seed=1"], done(80.0, 80.0))
    make_run(tmp_path / "second" / "2", [*CIFAR10_40, "seed=2"], done(90.0, 90.0))

    rows = build_rows(find_runs([str(tmp_path / "first"), str(tmp_path / "second")]))
    assert len(rows) == 1 and rows[0].done == 2 and rows[0].accuracy.mean == 85.0
    # The same folder given twice (or nested) is one run, not two.
    assert len(find_runs([str(tmp_path), str(tmp_path / "first")])) == 2


FOLDER_3 = ["experiment=quickstart", "ssl.num_labeled=3"]


def folder_run(folder: Path, root: str, seed: int, figure: float, preset: str = "folder",
               training_set: str = None) -> Path:
    """An image-folder run on `root`; with `training_set`, the sha256 its split.json records."""
    run = make_run(folder, [f"dataset={preset}", f"dataset.root='{root}'", *FOLDER_3,
                            f"seed={seed}"], done(figure, figure))
    if training_set is not None:
        (run / "split.json").write_text(json.dumps(
            {"indices": [0, 1, 2], "training_set": {"num_images": 9, "sha256": training_set}}))
    return run


def test_image_folder_sweeps_on_different_roots_are_rows_named_after_their_folder(tmp_path,
                                                                                 capsys):
    # The user's bug: two sweeps on two image folders (same seeds) made one row, 4/4 done.
    for seed, figure in [(1, 70.0), (2, 80.0)]:
        folder_run(tmp_path / "shapes_sweep" / str(seed), "/data/shapes", seed, figure)
        folder_run(tmp_path / "leaves_sweep" / str(seed), "/home/me/leaves/", seed, figure - 30)
        folder_run(tmp_path / "sar_sweep" / str(seed), "/scratch/mstar_soc", seed, figure - 20,
                   preset="mstar")  # dataset=mstar keeps dataset.name folder

    rows = build_rows(find_runs([str(tmp_path)]))
    assert [(row.key[0], len(row.runs), row.accuracy.mean) for row in rows] == [
        ("folder:leaves", 2, 45.0), ("folder:mstar_soc", 2, 55.0), ("folder:shapes", 2, 75.0)]
    assert not cell_warnings(rows)

    assert main([str(tmp_path / "shapes_sweep"), str(tmp_path / "leaves_sweep")]) == 0
    output = capsys.readouterr()
    assert output.err == ""
    assert output.out.splitlines()[2:] == [
        "| folder:leaves | WRN-10-1 | fixmatch | 3 | 2/2 done | 45.00 ± 7.07 | – | 45.00 ± 7.07 "
        "| 55.00 ± 7.07 | – |",
        "| folder:shapes | WRN-10-1 | fixmatch | 3 | 2/2 done | 75.00 ± 7.07 | – | 75.00 ± 7.07 "
        "| 25.00 ± 7.07 | – |"]
    # --by dataset.root, the old workaround, still splits the same way.
    assert [row.key[0] for row in build_rows(find_runs([str(tmp_path)]), by=["dataset.root"])] == [
        "folder:leaves", "folder:mstar_soc", "folder:shapes"]


def test_image_folders_with_the_same_name_get_as_much_of_their_path_as_tells_them_apart(
        tmp_path, capsys):
    roots = ["/data/shapes", "/backup/shapes", "data/shapes", "./data/shapes/", "/data/a|b_~"]
    for index, root in enumerate(roots):
        folder_run(tmp_path / str(index), root, index + 1, 50.0 + index)
    rows = build_rows(find_runs([str(tmp_path)]))
    # "./data/shapes/" is "data/shapes" as written: one root, one row. A root that is the
    # ending of another keeps its whole path.
    assert [(row.key[0], len(row.runs)) for row in rows] == [
        ("folder:/data/shapes", 1), ("folder:a|b_~", 1), ("folder:backup/shapes", 1),
        ("folder:data/shapes", 2)]

    markdown = format_table(rows).splitlines()
    assert markdown[3].startswith("| folder:a\\|b_~ | WRN-10-1 |")  # `|` would end the cell
    assert len({line.replace("\\|", "").count("|") for line in markdown}) == 1
    latex = format_table(rows, style="latex")
    assert "folder:a|b\\_\\textasciitilde{} & WRN-10-1" in latex
    records = list(csv.DictReader(io.StringIO(format_table(rows, style="csv"))))
    assert [record["dataset"] for record in records] == [row.key[0] for row in rows]


def test_cifar_runs_on_different_roots_still_merge(tmp_path, capsys):
    # For CIFAR the root is only where each machine keeps the same files.
    make_run(tmp_path / "machine_a" / "1", [*CIFAR10_40, "seed=1", "dataset.root=/a/data"],
             done(80.0, 80.0))
    make_run(tmp_path / "machine_b" / "2", [*CIFAR10_40, "seed=2", "dataset.root=./data"],
             done(90.0, 90.0))
    row, = build_rows(find_runs([str(tmp_path)]))
    assert row.key == ("cifar10", "WRN-28-2", "fixmatch", 40) and row.accuracy.mean == 85.0
    assert row.paper is not None
    assert main([str(tmp_path)]) == 0 and capsys.readouterr().err == ""


def test_a_repeated_seed_names_its_copies_and_other_images_under_one_root_are_flagged(
        tmp_path, capsys):
    # The same relative root on two machines: one row, and seed 1 twice.
    first = folder_run(tmp_path / "a" / "1", "data/shapes", 1, 70.0, training_set="aa")
    second = folder_run(tmp_path / "b" / "1", "data/shapes", 1, 80.0, training_set="aa")
    os.utime(first / "metrics.json", (1e9, 1e9))  # the copy in b/ finished last
    row, = build_rows(find_runs([str(tmp_path)]))
    warning, = cell_warnings([row])
    assert warning == (f"folder:shapes WRN-10-1 fixmatch 3 labels: seed 1 completed more than "
                       f"once; only the newest run of a seed counts (seed 1: {second}, "
                       f"not {first})")
    # One seed is one run of the mean, however often it ran.
    assert (row.accuracy.n, row.accuracy.mean, row.status_text()) == (1, 80.0, "1/2 done, 1 repeated")

    # Other images there (split.json's training set differs): not copies of one experiment.
    (second / "split.json").write_text(json.dumps(
        {"training_set": {"num_images": 12, "sha256": "bb"}}))
    row, = build_rows(find_runs([str(tmp_path)]))
    warning, = cell_warnings([row])
    assert "its runs trained on 2 different sets of images" in warning
    assert str(first) in warning and str(second) in warning and "seed 1" not in warning
    assert main([str(tmp_path)]) == 0
    assert "2 different sets of images" in capsys.readouterr().err


def test_runs_on_other_numbers_of_ranks_are_no_repeats_and_split_by_world_size(tmp_path):
    # Before: a 1-process and a 2-rank run of seed 1 (BatchNorm per rank: other numbers) were
    # one experiment, and one of them was silently left out as "repeated".
    make_run(tmp_path / "one", [*CIFAR10_40, "seed=1"], {**done(80.0, 80.0), "world_size": 1})
    make_run(tmp_path / "two", [*CIFAR10_40, "seed=1"], {**done(90.0, 90.0), "world_size": 2})
    row, = build_rows(find_runs([str(tmp_path)]))
    assert (row.accuracy.n, row.status_text()) == (2, "2/2 done")
    warning, = cell_warnings([row])
    assert warning.endswith("its runs differ in world_size; split them with --by world_size")
    rows = build_rows(find_runs([str(tmp_path)]), by=["world_size"])
    assert [(row.key[-1], row.accuracy.mean) for row in rows] == [(1, 80.0), (2, 90.0)]


def test_runs_from_before_world_size_was_recorded_ran_as_one_process(tmp_path, capsys):
    # Before: a copy whose metrics.json predates world_size was another experiment than the
    # same run recorded with world_size 1 (seed counted twice, a world_size warning), and a
    # starting run (no metrics.json) made every row warn about world_size.
    old = make_run(tmp_path / "old", [*CIFAR10_40, "seed=1"], done(80.0, 80.0))
    make_run(tmp_path / "new", [*CIFAR10_40, "seed=1"], {**done(80.0, 80.0), "world_size": 1})
    make_run(tmp_path / "starting", [*CIFAR10_40, "seed=2"])
    os.utime(old / "metrics.json", (1e9, 1e9))
    row, = build_rows(find_runs([str(tmp_path)]))
    assert (row.accuracy.n, row.status_text()) == (1, "1/3 done, 1 starting, 1 repeated")
    assert not any("world_size" in warning for warning in cell_warnings([row]))


def test_runs_whose_length_changed_while_they_trained_are_flagged(tmp_path):
    # Before: a 40-step run resumed to 60 steps counted as a fresh 60-step run, silently.
    make_run(tmp_path / "1", [*CIFAR10_40, "seed=1"], done(80.0, 81.0))
    extended = make_run(tmp_path / "2", [*CIFAR10_40, "seed=2"],
                        {**done(85.0, 86.0), "earlier_total_steps": [4]})
    row, = build_rows(find_runs([str(tmp_path)]))
    warning, = cell_warnings([row])
    assert warning.endswith(f": 1 of its runs changed trainer.total_steps while they trained "
                            f"(e.g. {extended}: 4 -> 8), so their learning rate did not follow "
                            "one schedule: they are not fresh runs of their final length")


@pytest.mark.parametrize("case", ["missing", "empty", "unknown key", "a group", "a file",
                                  "a format"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    make_run(tmp_path / "sweep" / "1", CIFAR10_40, done(80.0, 80.0))
    (tmp_path / "empty").mkdir()
    argv = {"missing": [str(tmp_path / "nowhere")], "empty": [str(tmp_path / "empty")],
            "unknown key": [str(tmp_path / "sweep"), "--by", "ssl.treshold"],
            "a group": [str(tmp_path / "sweep"), "--by", "ssl"],
            "a file": [str(tmp_path / "sweep" / "1" / "metrics.json")],
            # before: argparse's usage text, several lines
            "a format": [str(tmp_path / "sweep"), "--format", "md"]}[case]
    assert main(argv) == 2
    output = capsys.readouterr()
    assert output.out == "" and len(output.err.strip().splitlines()) == 1
    assert output.err.startswith("error: ")
    if case == "a file":  # before: "no such folder", for a file that is there
        assert "a file, not a folder" in output.err
    if case == "unknown key":
        assert "did you mean ssl.threshold?" in output.err
    if case == "a group":  # before: "did you mean" nothing, and a stray "; ("
        assert output.err.startswith("error: --by ssl: ssl is a group of settings, not one; name "
                                     "one of its keys, e.g. --by ssl.")
    if case == "a format":
        assert "invalid choice: 'md'" in output.err and "--help" in output.err


def test_sweeps_linked_into_a_folder_are_found_once(tmp_path):
    make_run(tmp_path / "sweep" / "1", CIFAR10_40, done(80.0, 80.0))
    (tmp_path / "all").mkdir()
    (tmp_path / "all" / "sweep").symlink_to(tmp_path / "sweep")
    (tmp_path / "all" / "again").symlink_to(tmp_path / "sweep")
    (tmp_path / "sweep" / "loop").symlink_to(tmp_path / "all")  # a link back up the tree
    row, = build_rows(find_runs([str(tmp_path / "all")]))
    assert row.status_text() == "1/1 done"


def test_plot_without_matplotlib_is_one_line(tmp_path, capsys, monkeypatch):
    make_run(tmp_path / "1", CIFAR10_40, done(80.0, 80.0))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert main([str(tmp_path), "--plot", str(tmp_path / "curves.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --plot needs matplotlib: pip install 'fixmatch[plot]'")


def test_plot_with_no_evaluation_anywhere_is_one_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    make_run(tmp_path / "1", CIFAR10_40, failed())
    assert main([str(tmp_path), "--plot", str(tmp_path / "curves.png")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --plot: no run has an evaluation yet (metrics.jsonl), so there is no curve to draw")
    assert not (tmp_path / "curves.png").exists()


def test_plot_draws_mean_and_band(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for seed, values in [(1, [10.0, 20.0]), (2, [20.0, 40.0])]:
        make_run(tmp_path / str(seed), [*CIFAR10_40, f"seed={seed}"], done(30.0, 30.0),
                 curve=list(zip([2, 4], values)))
    image = tmp_path / "curves.png"
    assert main([str(tmp_path), "--plot", str(image)]) == 0
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curve_mean_and_band_over_runs_of_different_length(tmp_path):
    curves = [{2: 10.0, 4: 20.0}, {2: 20.0, 4: 40.0, 6: 50.0}]
    steps, means, stds = mean_band(curves)
    assert steps == [2, 4, 6] and means == [15.0, 30.0, 50.0]
    assert stds == pytest.approx([math.sqrt(50), math.sqrt(200), 0.0])
    # The legend says the mean is over other runs at other steps (before: "n=2" throughout).
    assert runs_per_step(curves, steps) == "n=1-2 by step"
    assert runs_per_step(curves[:1], [2, 4]) == "n=1"

    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 2, "eval/top1_ema": 1.0}\n{"step": 2, "eval/top1_ema": 3.0}\n{"step": 4, "ev')
    assert read_curve(tmp_path) == {2: 3.0}  # a repeated step keeps its last value


# A real sweep: one Hydra multirun of tiny quickstart runs, then the command on its folder.
SWEEP = ["experiment=quickstart", "ssl.num_labeled=20,40", "ssl=fixmatch,supervised",
         "seed=1,2", "trainer.total_steps=4", "trainer.eval_every_steps=2",
         "trainer.log_every_steps=2"]


def run_sweep(sweep_dir: Path, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run.py"), "-m", *overrides,
                           f"hydra.sweep.dir={sweep_dir}"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def results_csv(*folders: Path) -> list:
    result = subprocess.run([sys.executable, "-m", "fixmatch.results", *map(str, folders),
                             "--format", "csv"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return list(csv.DictReader(io.StringIO(result.stdout)))


def figures_on_disk(sweep_dir: Path, num_labeled: int, algorithm: str) -> list:
    """The paper figures of one cell, read straight from the metrics files."""
    folders = sorted((sweep_dir / "digits" / str(num_labeled) / algorithm).iterdir())
    return [json.loads((folder / "metrics.json").read_text())["top1_ema_median_last20"]
            for folder in folders]


@pytest.mark.slow
def test_real_sweep_feeds_the_results_command(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(sweep_dir, *SWEEP, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # A run that stopped on a mistake in the sweep's folder (45 labels cannot split over 10
    # classes; a sweep with it is refused before its first job): the table counts it.
    failed = subprocess.run([sys.executable, str(REPO / "run.py"), *SWEEP[:1], "ssl.num_labeled=45",
                             f"hydra.run.dir={sweep_dir}/digits/45/fixmatch/1"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "ssl.num_labeled=45 must be" in failed.stderr
    # Each job its own folder, named from its config: <dataset>/<labels>/<ssl option>/<seed>.
    assert (sweep_dir / "digits" / "20" / "supervised" / "2" / "metrics.json").exists()

    records = {(record["num_labeled"], record["algorithm"]): record
               for record in results_csv(sweep_dir)}
    for num_labeled in [20, 40]:
        for algorithm in ["fixmatch", "supervised"]:
            record = records[(str(num_labeled), algorithm)]
            assert (record["runs"], record["done"], record["status"]) == ("2", "2", "2/2 done")
            figures = figures_on_disk(sweep_dir, num_labeled, algorithm)
            assert float(record["accuracy_mean"]) == pytest.approx(sum(figures) / 2, abs=1e-4)
            assert float(record["accuracy_std"]) == pytest.approx(
                abs(figures[0] - figures[1]) / math.sqrt(2), abs=1e-4)
    impossible = records[("45", "fixmatch")]
    assert impossible["done"] == "0" and "failed" in impossible["status"]
    assert impossible["accuracy_mean"] == ""


@pytest.mark.slow
def test_rerunning_a_sweep_skips_completed_runs_and_adds_new_ones(tmp_path):
    sweep_dir = tmp_path / "sweep"
    tiny = [SWEEP[0], "ssl.num_labeled=20", *SWEEP[4:]]
    assert run_sweep(sweep_dir, *tiny, "seed=1", cwd=tmp_path).returncode == 0
    first = sweep_dir / "digits" / "20" / "fixmatch" / "1"
    checkpoints = sorted((first / "checkpoints").glob("step_*.pt"))
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in checkpoints}
    curve = (first / "metrics.jsonl").read_bytes()
    summary = (first / "metrics.json").read_bytes()
    figure = json.loads(summary)["top1_ema_median_last20"]

    again = run_sweep(sweep_dir, *tiny, "seed=1,2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    # Seed 1 was neither trained nor evaluated again; seed 2 is new.
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in checkpoints} == before
    assert (first / "metrics.jsonl").read_bytes() == curve
    assert (first / "metrics.json").read_bytes() == summary
    figures = figures_on_disk(sweep_dir, 20, "fixmatch")
    assert figures[0] == figure
    record, = results_csv(sweep_dir)
    assert record["status"] == "2/2 done"
    assert float(record["accuracy_mean"]) == pytest.approx(sum(figures) / 2, abs=1e-4)


@pytest.mark.slow
def test_submitit_local_launcher_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(sweep_dir, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                       "experiment=quickstart", "ssl=fixmatch,supervised",
                       "trainer.total_steps=2", "trainer.eval_every_steps=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = results_csv(sweep_dir)
    assert [(record["algorithm"], record["status"]) for record in records] == [
        ("fixmatch", "1/1 done"), ("supervised", "1/1 done")]


@pytest.mark.parametrize("name", ["curves.foo", "curves"])
def test_plot_to_a_format_matplotlib_cannot_write_is_one_line_before_the_table(tmp_path, capsys,
                                                                              name):
    pytest.importorskip("matplotlib")
    make_run(tmp_path / "1", CIFAR10_40, done(80.0, 80.0), curve=[(2, 50.0)])
    assert main([str(tmp_path), "--plot", str(tmp_path / name)]) == 2
    output = capsys.readouterr()
    assert output.out == "" and len(output.err.strip().splitlines()) == 1
    assert output.err.startswith(f"error: --plot {tmp_path / name}: the file name must end in")


def test_plot_into_a_new_folder_creates_it_and_an_unwritable_one_is_one_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    make_run(tmp_path / "runs" / "1", CIFAR10_40, done(80.0, 80.0), curve=[(2, 50.0)])
    image = tmp_path / "plots" / "new" / "curves.png"
    assert main([str(tmp_path / "runs"), "--plot", str(image)]) == 0
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    (tmp_path / "file").write_text("")  # a folder in the way is a file
    assert main([str(tmp_path / "runs"), "--plot", str(tmp_path / "file" / "curves.png")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: --plot: cannot write") and "Traceback" not in error


@pytest.mark.parametrize("config_text,metrics_text", [
    ("", None),  # config_resolved.yaml cut short by a killed run
    ("seed: [1\n", None),  # not YAML
    (None, "[1, 2]"),  # metrics.json that is JSON but not an object
    (None, '{"status": "compl'),  # metrics.json cut short
])
def test_unreadable_run_files_are_counted_with_a_warning(tmp_path, capsys, config_text,
                                                         metrics_text):
    make_run(tmp_path / "good", CIFAR10_40, done(80.0, 80.0))
    bad = make_run(tmp_path / "bad", [*CIFAR10_40, "seed=2"], done(70.0, 70.0))
    if config_text is not None:
        (bad / "config_resolved.yaml").write_text(config_text)
    if metrics_text is not None:
        (bad / "metrics.json").write_text(metrics_text)
    assert main([str(tmp_path)]) == 0
    output = capsys.readouterr()
    assert "1 unreadable" in output.out and "Traceback" not in output.err
    warnings = [line for line in output.err.splitlines() if line.startswith(f"warning: {bad}")]
    assert len(warnings) == 1 and "cannot read" in warnings[0]


# The user's case: 20 steps of a WRN-10-1 at batch 4 printed beside the paper's 86.19 as if
# it were a failed reproduction.
TINY = [*CIFAR10_40, "model.depth=10", "model.widen_factor=1", "trainer.total_steps=20",
        "ssl.batch_size=4"]


def test_runs_off_the_paper_protocol_are_warned_about_and_their_paper_cells_marked(tmp_path,
                                                                                  capsys):
    for seed in [1, 2]:
        make_run(tmp_path / "tiny" / str(seed), [*TINY, f"seed={seed}"], done(9.0, 9.0))
        make_run(tmp_path / "paper" / str(seed), ["experiment=cifar10_250", f"seed={seed}"],
                 done(94.0, 94.0))
        make_run(tmp_path / "wide" / str(seed), ["experiment=cifar100_400", f"seed={seed}",
                                                 "model.widen_factor=2", "optim.nesterov=false"],
                 done(50.0, 50.0))
    make_run(tmp_path / "wide" / "3", ["experiment=cifar100_400", "seed=3",
                                       "model.widen_factor=2", "ssl.threshold=0.8"],
             done(50.0, 50.0))

    assert main([str(tmp_path)]) == 0
    output = capsys.readouterr()
    assert output.err.splitlines() == [
        "warning: cifar100 WRN-28-2 fixmatch 400 labels: its runs differ in optim.nesterov, "
        "ssl.threshold; split them with --by optim.nesterov --by ssl.threshold",
        "warning: cifar10 WRN-10-1 fixmatch 40 labels: not the paper's protocol (model WRN-10-1 "
        "vs WRN-28-2, ssl.batch_size 4 vs 64, trainer.total_steps 20 vs 1048576); its paper "
        "columns are the paper's runs, for reference",
        "warning: cifar100 WRN-28-2 fixmatch 400 labels: not the paper's protocol (model "
        "WRN-28-2 vs WRN-28-8, ssl.threshold 0.8 vs 0.95, optim.nesterov False vs True); its "
        "paper columns are the paper's runs, for reference"]
    lines = output.out.splitlines()
    assert lines[2] == ("| cifar10 | WRN-10-1 | fixmatch | 40 | 2/2 done | 9.00 ± 0.00 "
                        "| 86.19 ± 3.37* | 9.00 ± 0.00 | 91.00 ± 0.00 | 13.81 ± 3.37* |")
    assert lines[3] == ("| cifar10 | WRN-28-2 | fixmatch | 250 | 2/2 done | 94.00 ± 0.00 "
                        "| 94.93 ± 0.65 | 94.00 ± 0.00 | 6.00 ± 0.00 | 5.07 ± 0.65 |")
    assert "| 51.15 ± 1.75* |" in lines[4]
    assert lines[5:] == ["", "Paper figures marked * are the paper's runs, for reference: that "
                         "row's runs do not follow the paper's protocol (see the warnings)"]

    rows = build_rows(find_runs([str(tmp_path)]))
    records = list(csv.DictReader(io.StringIO(format_table(rows, style="csv"))))
    assert [record["paper_protocol"] for record in records] == ["False", "True", "False"]
    assert float(records[0]["paper_accuracy_mean"]) == 86.19  # the figure itself, unmarked
    latex = format_table(rows, style="latex").splitlines()
    assert "86.19 $\\pm$ 3.37* & " in latex[4] and "94.93 $\\pm$ 0.65 & " in latex[5]
    assert latex[-2].startswith("\\multicolumn{10}{l}{\\footnotesize Paper figures marked *")


def test_runs_of_the_paper_presets_follow_the_protocol_and_are_unmarked(tmp_path, capsys):
    # paper.PROTOCOL is what every paper preset composes to (and only the presets' cells).
    presets = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
    presets.remove("quickstart")
    for preset in presets:
        make_run(tmp_path / preset, [f"experiment={preset}"], done(90.0, 90.0))
    make_run(tmp_path / "quickstart", ["experiment=quickstart"], done(90.0, 90.0))
    rows = build_rows(find_runs([str(tmp_path)]))
    assert len(rows) == len(presets) + 1
    assert {row.key[0]: row.paper_protocol for row in rows if row.paper is None} == {
        "digits": None}  # the quickstart has no paper figure to compare with
    assert all(row.paper_protocol for row in rows if row.paper is not None)
    assert not protocol_warnings(rows)
    assert main([str(tmp_path), "--format", "csv"]) == 0
    output = capsys.readouterr()
    assert output.err == "" and "*" not in output.out
    assert "*" not in format_table(rows) and "*" not in format_table(rows, style="latex")


@pytest.mark.parametrize("preset,override,named", [
    ("cifar10_40", "ssl.randaugment_variant=port", "ssl.randaugment_variant port vs official"),
    ("cifar10_40", "optim.ema_warmup=true", "optim.ema_warmup True vs False"),
    ("cifar10_40", "model.bn_momentum=0.1", "model.bn_momentum 0.1 vs 0.001"),
    ("cifar10_40", "trainer.eval_every_steps=1", "trainer.eval_every_steps 1 vs 1024"),
    ("cifar10_40", "ssl.cutout_fraction=0", "ssl.cutout_fraction 0.0 vs 0.5"),
    ("svhn_40", "dataset.hflip=true", "dataset.hflip True vs False"),
    ("svhn_40", "dataset.labeled_split=balanced", "dataset.labeled_split balanced vs proportional"),
    ("cifar10_40_cta", "ssl.cta_decay=0.9", "ssl.cta_decay 0.9 vs 0.99"),
])
def test_settings_that_change_the_figure_mark_a_row_off_protocol(tmp_path, preset, override, named):
    # Before: only the model, batch, loss weights, length and optimiser were compared, so a
    # run with the port's RandAugment (or an SVHN run with flips) stood beside the paper's.
    make_run(tmp_path / "1", [f"experiment={preset}", override], done(90.0, 90.0))
    row, = build_rows(find_runs([str(tmp_path)]))
    assert row.off_protocol == (named,)


def test_plot_replaces_its_own_image_but_never_a_file_it_did_not_draw(tmp_path, capsys):
    # Before: --plot userpic.png replaced the user's image.
    pytest.importorskip("matplotlib")
    make_run(tmp_path / "runs" / "1", CIFAR10_40, done(30.0, 30.0), curve=[(2, 10.0)])
    for name in ["curves.png", "curves.pdf", "curves.svg"]:
        image = tmp_path / name
        assert main([str(tmp_path / "runs"), "--plot", str(image)]) == 0
        assert main([str(tmp_path / "runs"), "--plot", str(image)]) == 0  # its own: replaced
    # formats matplotlib hands to PIL carry the mark PIL writes (before: refused to save)
    for name in ["curves.jpg", "curves.tif"]:
        assert main([str(tmp_path / "runs"), "--plot", str(tmp_path / name)]) == 0
        assert main([str(tmp_path / "runs"), "--plot", str(tmp_path / name)]) == 0
    # one without a text entry is written, but then never replaced
    assert main([str(tmp_path / "runs"), "--plot", str(tmp_path / "curves.webp")]) == 0
    assert main([str(tmp_path / "runs"), "--plot", str(tmp_path / "curves.webp")]) == 2
    mine = tmp_path / "userpic.png"
    mine.write_bytes(b"\x89PNG\r\n\x1a\n not a plot")
    capsys.readouterr()
    assert main([str(tmp_path / "runs"), "--plot", str(mine)]) == 2
    output = capsys.readouterr()
    assert output.out == "" and output.err.strip() == (
        f"error: --plot {mine}: {mine} already exists and is a file no results --plot drew; "
        "choose another name (or move it away)")
    assert mine.read_bytes() == b"\x89PNG\r\n\x1a\n not a plot"


def test_jobs_of_a_sweep_that_never_started_are_named(tmp_path, capsys):
    # Before: a sweep stopped after 2 of its 4 jobs tabulated as "2/2 done", nothing missing.
    sweep = tmp_path / "sweep"
    for seed in (1, 2):
        make_run(sweep / str(seed), [*CIFAR10_40, f"seed={seed}"], done(80.0, 80.0))
    command = {"hydra": {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper."
                                                 "BasicSweeper"},
                         "overrides": {"task": ["ssl.num_labeled=40", "seed=1,2,3,4"]}}}
    (sweep / "multirun.yaml").write_text(OmegaConf.to_yaml(command))
    assert main([str(sweep)]) == 0
    assert capsys.readouterr().err.strip() == (
        f"warning: {sweep}: 2 of the 4 jobs of its sweep command (multirun.yaml) never started "
        f"(e.g. seed=3): rerun the sweep with hydra.sweep.dir={sweep} to run them")
    command["hydra"]["overrides"]["task"] = ["ssl.num_labeled=40", "seed=1,2"]
    (sweep / "multirun.yaml").write_text(OmegaConf.to_yaml(command))
    assert main([str(sweep)]) == 0 and capsys.readouterr().err == ""

    # Before: runs of an earlier sweep into the same folder made up the count, so a sweep
    # that stopped early (here: seeds 5 and 6 of 3-6) went unnoticed.
    command["hydra"]["overrides"]["task"] = ["ssl.num_labeled=40", "seed=3,4,5,6"]
    (sweep / "multirun.yaml").write_text(OmegaConf.to_yaml(command))
    for seed in (3, 4):
        make_run(sweep / str(seed), [*CIFAR10_40, f"seed={seed}"], done(80.0, 80.0))
    assert main([str(sweep)]) == 0
    assert "2 of the 4 jobs of its sweep command (multirun.yaml) never started (e.g. seed=5)" \
        in capsys.readouterr().err

    # Before: runs of an earlier sweep with other fixed values (here 250 labels, seeds 5
    # and 6) stood in for this command's missing jobs.
    for seed in (5, 6):
        make_run(sweep / f"other{seed}", ["ssl.num_labeled=250", f"seed={seed}"], done(80.0, 80.0))
    assert main([str(sweep)]) == 0
    assert "2 of the 4 jobs of its sweep command (multirun.yaml) never started (e.g. seed=5)" \
        in capsys.readouterr().err

    # A rerun of a finished sweep with another per-run setting, a list value and a path
    # written as a number still finds its runs (before: "2 of the 2 jobs never started").
    rerun = tmp_path / "rerun"
    for seed in (1, 2):
        make_run(rerun / str(seed), [*CIFAR10_40, f"seed={seed}", "dataset.root=2024",
                                     "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.2,0.2,0.2]"],
                 done(80.0, 80.0))
    command["hydra"]["overrides"]["task"] = [
        "ssl.num_labeled=40", "trainer.num_threads=2", "dataset.root=2024",
        "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.2,0.2,0.2]", "seed=1,2"]
    (rerun / "multirun.yaml").write_text(OmegaConf.to_yaml(command))
    capsys.readouterr()
    assert main([str(rerun)]) == 0 and capsys.readouterr().err == ""
    # ... and so does one with an execution or cadence key changed, which resume allows and
    # a completed run ignores, or a key given twice (Hydra keeps the last value); before:
    # "2 of the 2 jobs never started", for good.
    command["hydra"]["overrides"]["task"] = [
        "ssl.num_labeled=40", "trainer.channels_last=false", "trainer.eval_every_steps=7",
        "dataset.root=2024", "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.2,0.2,0.2]",
        "ssl.num_labeled=250", "ssl.num_labeled=40", "seed=1,2"]
    (rerun / "multirun.yaml").write_text(OmegaConf.to_yaml(command))
    assert main([str(rerun)]) == 0 and capsys.readouterr().err == ""

    # Before: while the sweep still ran, the warning said to rerun it (a second copy).
    make_run(sweep / "5", [*CIFAR10_40, "seed=5"], {**done(50.0, 50.0), "status": "running"})
    training = FolderLock(sweep / "5").acquire()  # as the process training there holds it
    assert main([str(sweep)]) == 0
    training.release()
    assert capsys.readouterr().err.strip() == (
        f"warning: {sweep}: 1 of the 4 jobs of its sweep command (multirun.yaml) have no run "
        "folder yet (e.g. seed=6) and 1 of its runs are running, so the sweep may still be "
        f"running; once it has stopped, rerun it with hydra.sweep.dir={sweep} to run the rest")
