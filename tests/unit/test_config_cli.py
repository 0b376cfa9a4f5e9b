"""The config file / command-line layer (sea_dist.config_cli)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sea_dist.config import Config
from sea_dist.config import (
    ConfigError,
    apply_overrides,
    config_to_dict,
    iter_options,
    load_config_file,
    validate_config,
)
from sea_dist.config_cli import parse_args

ALL_KEYS = [
    f"{section.name}.{f.name}"
    for section in dataclasses.fields(Config)
    for f in dataclasses.fields(getattr(Config(), section.name))
]


def test_config_to_dict_is_nested_plain() -> None:
    d = config_to_dict(Config())
    assert d["graph"]["knn_k"] == 10
    assert d["graph"]["fanouts"] == [10, 10]
    assert d["eval"]["topk"] == [10, 20]
    assert set(d) == {"data", "graph", "prepare", "model", "train", "eval", "output", "metrics"}


def test_every_field_has_help() -> None:
    keys = [key for key, _, _, help_text in iter_options() if help_text]
    assert keys == ALL_KEYS


def test_overrides_of_each_type() -> None:
    base = Config()
    cfg = apply_overrides(
        base,
        [
            "graph.knn_k=20",
            "model.temp=0.5",
            "train.full_graph=yes",
            "output.write_embeddings=0",
            "train.run_name=exp1",
            "graph.fanouts=5,15",
            "graph.modality_weights=[0.25, 0.75]",
            "eval.topk=5,10,20",
            "data.root=s3://bucket/x=y",  # only the first "=" splits
        ],
    )
    assert cfg.graph.knn_k == 20 and isinstance(cfg.graph.knn_k, int)
    assert cfg.model.temp == 0.5
    assert cfg.train.full_graph is True
    assert cfg.output.write_embeddings is False
    assert cfg.train.run_name == "exp1"
    assert cfg.graph.fanouts == [5, 15]
    assert cfg.graph.modality_weights == [0.25, 0.75]
    assert cfg.eval.topk == [5, 10, 20]
    assert cfg.data.root == "s3://bucket/x=y"
    # The input config is untouched.
    assert base.graph.knn_k == 10 and base.graph.fanouts == [10, 10]


@pytest.mark.parametrize(
    "text,expected",
    [("true", True), ("False", False), ("1", True), ("0", False), ("YES", True), ("no", False)],
)
def test_bool_spellings(text: str, expected: bool) -> None:
    assert apply_overrides(Config(), [f"train.resume={text}"]).train.resume is expected


def test_overrides_from_dicts() -> None:
    cfg = apply_overrides(
        Config(), {"model": {"embedding_dim": 32, "club_fit": "within_modality"},
                   "train.lr": "0.001", "train": {"gpus_per_worker": 1}}
    )
    assert cfg.model.embedding_dim == 32
    assert cfg.model.club_fit == "within_modality"
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.gpus_per_worker == 1.0 and isinstance(cfg.train.gpus_per_worker, float)
    # Comma-separated list with floats, and an empty list.
    cfg = apply_overrides(Config(), ["graph.modality_weights=0.3,0.7"])
    assert cfg.graph.modality_weights == [0.3, 0.7]
    assert apply_overrides(cfg, ["graph.modality_weights="]).graph.modality_weights == []


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), ["model.knn_kk=3"])
    msg = str(info.value)
    assert "model.knn_kk" in msg
    assert "embedding_dim" in msg and "club_fit" in msg  # valid keys of the section


def test_unknown_section_lists_sections() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), {"modle": {"temp": 1}})
    msg = str(info.value)
    assert "modle" in msg
    for section in ("data", "graph", "model", "train", "eval", "output"):
        assert section in msg
    with pytest.raises(ConfigError, match="section.key"):
        apply_overrides(Config(), ["knn_k=3"])


@pytest.mark.parametrize(
    "override,type_name",
    [
        ("graph.knn_k=ten", "int"),
        ("model.temp=hot", "float"),
        ("train.use_gpu=maybe", "bool"),
        ("graph.fanouts=[1,2", "list"),
    ],
)
def test_bad_value_message(override: str, type_name: str) -> None:
    key, value = override.split("=", 1)
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), [override])
    msg = str(info.value)
    assert key in msg and value in msg and type_name in msg


def test_override_without_equals_is_error() -> None:
    with pytest.raises(ConfigError):
        apply_overrides(Config(), ["graph.knn_k"])


def test_load_config_file_toml_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[model]\nembedding_dim = 32\n\n[graph]\nfanouts = [5, 5]\n')
    assert load_config_file(str(path)) == {"model": {"embedding_dim": 32},
                                           "graph": {"fanouts": [5, 5]}}
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config_file(str(bad))


def test_load_config_file_yaml(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 7\n  run_name: 42\n")
    cfg = apply_overrides(Config(), load_config_file(str(path)))
    assert cfg.train.epochs == 7
    assert cfg.train.run_name == "42"


def test_precedence_file_flags_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        "[train]\nepochs = 50\nnum_workers = 4\nlr = 0.01\n\n"
        "[output]\noutput_dir = \"from_file\"\n\n[model]\ntemp = 0.3\n"
    )
    cfg, ns = parse_args(
        ["--config", str(path), "--epochs", "7", "--output-dir", "from_flag",
         "train.epochs=9", "--full-graph", "model.temp=0.4"]
    )
    assert cfg.train.epochs == 9          # dotted override beats flag beats file
    assert cfg.output.output_dir == "from_flag"  # flag beats file
    assert cfg.train.num_workers == 4     # file beats default
    assert cfg.train.lr == pytest.approx(0.01)
    assert cfg.model.temp == pytest.approx(0.4)
    assert cfg.train.full_graph is True
    assert cfg.train.resume is False      # flags not given leave values alone
    assert ns.config == str(path)


def test_convenience_flags() -> None:
    cfg, _ = parse_args(["--resume", "--num-workers", "3", "--gpus-per-worker", "0.5"])
    assert cfg.train.resume is True
    assert cfg.train.num_workers == 3
    assert cfg.train.gpus_per_worker == 0.5 and cfg.train.use_gpu is True
    cfg, _ = parse_args(["--use-gpu"])
    assert cfg.train.use_gpu is True
    cfg, _ = parse_args([])
    assert cfg == Config()


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["--help"], prog="train.py", description="SEA trainer")
    assert info.value.code == 0
    out = capsys.readouterr().out
    for key in ALL_KEYS:
        assert key in out, key
    assert "SEA trainer" in out
    assert "neighbours per item in each modality's item-item kNN graph" in out
    assert "graph.fanouts (list, default [10, 10])" in out
    for flag in ("--config", "--full-graph", "--resume", "--output-dir", "--num-workers",
                 "--gpus-per-worker", "--epochs", "--use-gpu"):
        assert flag in out


def test_cli_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["graph.knn_k"])
    assert info.value.code == 2
    assert "section.key=value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["graph.knn_k=abc"])
    assert "graph.knn_k" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--config", str(tmp_path / "missing.toml")])
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["eval.valid_metric=recall@50"])
    assert "valid_metric" in capsys.readouterr().err


def test_validate_defaults_pass() -> None:
    validate_config(Config())


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["train.batch_size=2", "train.num_workers=4"], "train.batch_size"),
        (["model.embedding_dim=0"], "model.embedding_dim"),
        (["train.num_workers=-1"], "train.num_workers"),
        (["graph.fanouts=10,10,10"], "model.n_ui_layers"),
        (["graph.fanouts=10,0"], "graph.fanouts"),
        (["model.club_fit=cross"], "within_modality"),
        (["eval.valid_metric=hr@20"], "eval.valid_metric"),
        (["eval.valid_metric=ndcg@5"], "not in eval.topk"),
        (["graph.modality_weights=0.5,0.6"], "sum to 1"),
        (["graph.modality_weights=-0.5,1.5"], "non-negative"),
        (["train.gpus_per_worker=1"], "use_gpu"),
        (["eval.topk=[]"], "eval.topk"),
    ],
)
def test_validate_config_errors(overrides: list[str], fragment: str) -> None:
    cfg = apply_overrides(Config(), overrides)
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        validate_config(cfg)


def test_validate_config_accepts_good_variants() -> None:
    cfg = apply_overrides(
        Config(),
        ["graph.modality_weights=0.2,0.3,0.5", "eval.valid_metric=ndcg@10",
         "graph.fanouts=-1,5", "train.gpus_per_worker=1", "train.use_gpu=true",
         "model.club_fit=within_modality"],
    )
    validate_config(cfg)


def test_validate_reports_all_problems_at_once() -> None:
    cfg = apply_overrides(Config(), ["model.temp=0", "model.club_fit=x"])
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert "model.temp" in str(info.value) and "model.club_fit" in str(info.value)
