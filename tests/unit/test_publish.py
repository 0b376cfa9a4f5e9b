"""Atomic publishing: a crash at any stage leaves the previous model; reruns are no-ops."""
import json
import os

import pytest

from sea_dist.config import Config
from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic
from sea_dist.ops import outputs as outputs_module
from sea_dist.ops.publish import Publisher, PublishError
from sea_dist.train import launcher


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    spec = SyntheticSpec(n_users=150, n_items=60, n_interactions=1800, modalities={"image": 8, "text": 6}, name="pub")
    return write_synthetic(spec, str(tmp_path_factory.mktemp("pub") / "data"))


def _cfg(root, out, epochs=1, **train):
    cfg = Config()
    cfg.data.root = root
    cfg.output.output_dir = str(out)
    cfg.train.full_graph = True
    cfg.train.epochs = epochs
    cfg.train.batch_size = 512
    cfg.model.club_inner_steps = 2
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def _published(out):
    pub = Publisher(str(out))
    manifest = pub.read_manifest()
    for name, size in manifest["files"].items():  # everything the manifest names is complete
        assert os.path.getsize(pub.published_file(name)) == size
    return manifest, pub.read_published_json("summary.json")


STAGES = [
    ("write_embeddings", "users"),
    ("write_embeddings", "items"),
    ("write_text", "report.html"),
    ("write_summary", None),
    ("publish", None),
]


@pytest.mark.parametrize("method,arg", STAGES)
def test_a_crash_at_any_stage_keeps_the_previous_model(root, tmp_path, monkeypatch, method, arg):
    out = tmp_path / "out"
    launcher.run(_cfg(root, out, epochs=1))
    before_manifest, before_summary = _published(out)

    class Crash(RuntimeError):
        pass

    if method == "publish":
        def boom(self, *a, **k):
            raise Crash("crash before the manifest is written")
        monkeypatch.setattr(Publisher, "_write_atomically", boom)
    else:
        original = getattr(outputs_module.RunOutputs, method)

        def boom(self, *a, **k):
            if arg is None or any(isinstance(x, str) and x == arg for x in a):
                raise Crash(f"crash in {method}({arg})")
            return original(self, *a, **k)
        monkeypatch.setattr(outputs_module.RunOutputs, method, boom)

    with pytest.raises(Crash):
        launcher.run(_cfg(root, out, epochs=2))
    after_manifest, after_summary = _published(out)
    assert after_manifest == before_manifest and after_summary == before_summary

    monkeypatch.undo()
    launcher.run(_cfg(root, out, epochs=2))
    final_manifest, final_summary = _published(out)
    assert final_manifest["run_id"] != before_manifest["run_id"] and final_summary["epochs_run"] == 2
    # the crashed attempt's orphaned prefix and older runs are cleaned, the published one stays
    runs = os.listdir(out / "runs")
    assert os.path.basename(final_manifest["prefix"]) in runs and len(runs) <= 2


def test_a_rerun_for_the_same_data_and_config_is_a_no_op(root, tmp_path):
    out = tmp_path / "out"
    first = launcher.run(_cfg(root, out))
    manifest, _ = _published(out)
    again = launcher.run(_cfg(root, out))
    assert again == first and _published(out)[0] == manifest  # nothing retrained or rewritten
    cfg = _cfg(root, out)
    cfg.output.republish = True
    launcher.run(cfg)
    assert _published(out)[0]["run_id"] != manifest["run_id"]


def test_reading_without_a_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(PublishError, match="no MANIFEST.json"):
        Publisher(str(tmp_path)).read_published_json("summary.json")
