import os
import pickle

import pytest
import torch

from sea_dist.train.checkpoint import load_checkpoint, save_checkpoint


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_round_trip_of_plain_state(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "progress": {"next_epoch": 3, "history": [{"a": 1.0}]}}
    save_checkpoint(str(tmp_path), state)
    loaded = load_checkpoint(str(tmp_path))
    assert torch.equal(loaded["model"]["w"], torch.ones(2)) and loaded["progress"]["next_epoch"] == 3


def test_arbitrary_objects_are_refused(tmp_path):
    torch.save({"x": _Evil()}, tmp_path / "state.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(str(tmp_path))


def test_missing_checkpoint_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_checkpoint(str(tmp_path))
