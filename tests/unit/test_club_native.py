"""The compiled CLUB kernel's build, cache and fallbacks (its numbers: test_club_fit.py)."""
import logging
import os

import pytest
import torch

from sea_dist.config import Config, ConfigError, apply_overrides
from sea_dist.model import club_native
from sea_dist.model.club_fit import fit_club
from sea_dist.model.club_native import NativeKernelUnavailable, club_kernel
from sea_dist.model.losses import GaussianPredictor


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and no kernel loaded in this process yet."""
    monkeypatch.setenv("SEA_DIST_CACHE", str(tmp_path))
    club_native._load_or_why.cache_clear()
    club_native._warn_once.cache_clear()
    yield tmp_path / "native"
    club_native._load_or_why.cache_clear()
    club_native._warn_once.cache_clear()


def _fit(kernel: str, rows: int = 20, width: int = 32) -> list[torch.Tensor]:
    torch.manual_seed(0)
    net = GaussianPredictor(width, width, 8)
    x, y = torch.randn(rows, width), torch.randn(rows, width)
    fit_club([(net, x, y)], torch.optim.Adam(net.parameters(), lr=1e-3), 5, kernel=kernel)
    return [p.detach().clone() for p in net.parameters()]


def test_built_once_per_shape_then_loaded_from_the_cache(fresh, monkeypatch):
    kernel = club_kernel(32, 8, 32, "native")
    assert kernel.lanes in (4, 8, 16) and kernel.scratch_bytes > 0
    built = sorted(p.name for p in fresh.iterdir())
    assert len(built) == 1 and built[0].startswith("club_kernel_32_8_32_") and built[0].endswith(".so")
    assert club_kernel(32, 8, 32, "native") is kernel  # one load per process

    def no_build(*_):
        raise AssertionError("the cached library should have been loaded, not rebuilt")

    club_native._load_or_why.cache_clear()  # as a new process would
    monkeypatch.setattr(club_native, "_build", no_build)
    assert club_kernel(32, 8, 32, "native").lanes == kernel.lanes


def test_a_new_shape_builds_its_own_library(fresh):
    club_kernel(32, 8, 32, "native")
    club_kernel(16, 4, 16, "native")
    assert len(list(fresh.iterdir())) == 2
    assert not [p for p in fresh.iterdir() if not p.name.endswith(".so")]  # no temp files left


def test_without_a_compiler_auto_falls_back_to_torch_and_native_refuses(fresh, monkeypatch, caplog):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    with caplog.at_level(logging.WARNING, logger="sea_dist.model.club_native"):
        assert club_kernel(32, 8, 32, "auto") is None
        assert club_kernel(32, 8, 32, "auto") is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "no C compiler found" in warnings[0]  # said once, not per step
    with pytest.raises(NativeKernelUnavailable, match="no C compiler found"):
        club_kernel(32, 8, 32, "native")
    # the fit itself goes on with torch ops, to the same numbers as an explicit torch fit
    assert all(torch.equal(a, b) for a, b in zip(_fit("auto"), _fit("torch")))
    with pytest.raises(NativeKernelUnavailable):
        _fit("native")


def test_a_failing_compiler_is_reported_with_its_output(fresh, monkeypatch, tmp_path):
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'cc: fatal error: out of cheese' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    with pytest.raises(NativeKernelUnavailable, match="out of cheese"):
        club_kernel(32, 8, 32, "native")
    assert not list(fresh.iterdir())  # nothing half-built left behind


def test_a_hanging_compiler_times_out_and_auto_falls_back(fresh, monkeypatch, tmp_path):
    hanging = tmp_path / "hanging-cc"
    hanging.write_text("#!/bin/sh\n[ \"$1\" = --version ] && exit 0\nexec sleep 30\n")
    hanging.chmod(0o755)
    monkeypatch.setenv("CC", str(hanging))
    monkeypatch.setattr(club_native, "BUILD_TIMEOUT_S", 0.5)
    assert club_kernel(32, 8, 32, "auto") is None
    with pytest.raises(NativeKernelUnavailable, match="timed out after"):
        club_kernel(32, 8, 32, "native")


def test_unsupported_widths_and_dtypes(fresh):
    assert club_kernel(12, 8, 12, "auto") is None  # input width not a multiple of 8
    with pytest.raises(NativeKernelUnavailable, match="divisible by 8"):
        club_kernel(12, 8, 12, "native")
    assert _fit("auto", width=12) and not fresh.exists()  # torch ops, nothing compiled
    net = GaussianPredictor(32, 32, 8).double()
    x = torch.randn(5, 32, dtype=torch.float64)
    with pytest.raises(ValueError, match="float32 CPU rows"):
        fit_club([(net, x, x)], torch.optim.Adam(net.parameters()), 1, kernel="native")
    with pytest.raises(ValueError, match="must be one of"):
        club_kernel(32, 8, 32, "fast")


def test_native_and_torch_fits_agree():
    native, plain = _fit("native", rows=45), _fit("torch", rows=45)
    assert max((a - b).abs().max().item() for a, b in zip(native, plain)) < 1e-6
    assert max((a - b).abs().max().item() for a, b in zip(native, _fit("torch", rows=44))) > 1e-6


def test_the_config_knob_is_checked():
    assert Config().train.club_kernel == "auto"
    assert apply_overrides(Config(), ["train.club_kernel=torch"]).train.club_kernel == "torch"
    with pytest.raises(ConfigError, match="train.club_kernel must be one of auto, native, torch"):
        apply_overrides(Config(), ["train.club_kernel=gpu"]).validate()


def test_the_kernel_source_ships_with_the_package():
    assert os.path.isfile(club_native.SOURCE)
