"""checkpoint.load_checkpoint: a file that cannot be used is named with a short, true reason."""

import json

import pytest
import torch

from fixmatch.checkpoint import CHECKPOINT_FORMAT, CheckpointError, CheckpointStore, load_checkpoint


class Foreign:  # a class a pickle would have to import to rebuild
    pass


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "step_000000002.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "step": 2, "model": {"w": torch.ones(64, 64)}}, path)
    return path


def test_a_good_checkpoint_loads(saved):
    assert load_checkpoint(saved)["step"] == 2


@pytest.mark.parametrize("damage,reason", [
    (lambda path: path.write_bytes(path.read_bytes()[:3000]), "3000 bytes, truncated or corrupt"),
    (lambda path: path.write_bytes(b""), "empty"),
    (lambda path: path.write_text(json.dumps({"step": 2})), "truncated or corrupt (or not a PyTorch file"),
])
def test_a_truncated_or_foreign_file_says_so_in_a_few_words(saved, damage, reason):
    # Before: torch's paragraph cut at 200 characters, mid-sentence ("... your checkpoint
    # file is"), or, for a file that is no checkpoint, advice to load it with weights_only=False.
    damage(saved)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(saved)
    message = str(caught.value)
    assert message.startswith(f"checkpoint {saved} is unreadable") and reason in message
    assert "weights_only" not in message and "\n" not in message and len(message) < 300


def test_a_checkpoint_that_would_import_code_is_named_unsafe(tmp_path, recwarn):
    path = tmp_path / "step_000000001.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": Foreign()}, path)
    with pytest.raises(CheckpointError, match=r"is unsafe to load: it would import \S*Foreign"):
        load_checkpoint(path)
    assert not [warning for warning in recwarn if "torch" in warning.filename]


def test_a_save_removes_the_temporary_file_a_killed_writer_left(tmp_path):
    # Temporary files are named by the writer's pid: a process killed mid-write left one,
    # and every later kill another, beside the checkpoints.
    store = CheckpointStore(tmp_path / "checkpoints", keep=2)
    store.save({"format": CHECKPOINT_FORMAT, "step": 1}, 1)
    (tmp_path / "checkpoints" / ".step_000000002.pt.4242.tmp").write_bytes(b"half a checkpoint")
    store.save({"format": CHECKPOINT_FORMAT, "step": 2}, 2)
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == [
        "last.pt", "step_000000001.pt", "step_000000002.pt"]
