"""Files replaced as a whole: the old file or the new one, never half, no leftovers."""

import json

import pytest

from fixmatch.atomic_files import replaced_atomically, write_json_atomic, write_lines_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"status": "completed"})
    with pytest.raises(KeyboardInterrupt):
        with replaced_atomically(path) as file:
            file.write('{"status": "run')
            raise KeyboardInterrupt  # Ctrl-C halfway through the write
    assert json.loads(path.read_text()) == {"status": "completed"}
    assert [entry.name for entry in tmp_path.iterdir()] == ["metrics.json"]


def test_a_finished_write_replaces_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_lines_atomic(path, ["old"])
    write_lines_atomic(path, ['{"step": 1}', '{"step": 2}'])
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    with replaced_atomically(tmp_path / "cache.npy", "wb") as file:
        file.write(b"\x93NUMPY")
    assert (tmp_path / "cache.npy").read_bytes() == b"\x93NUMPY"
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["cache.npy", "metrics.jsonl"]
