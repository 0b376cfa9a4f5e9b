import pathlib

import pytest

from sea_dist.config import Config
from sea_dist.config import apply_overrides, load_config_file, validate_config

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads_and_validates(path):
    cfg = apply_overrides(Config(), load_config_file(str(path)))
    validate_config(cfg)


def test_reference_config_is_the_reference():
    cfg = apply_overrides(Config(), load_config_file(str(CONFIGS[0].parent / "reference.toml")))
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size, cfg.train.seed) == (1000, 1e-4, 2048, 999)
