"""The DGL compatibility shim: dgl imports and works under our torch; GraphBolt fails clearly."""
import pathlib
import re
import subprocess
import sys

import pytest
import torch

from sea_dist.graph.dgl_compat import dgl


def test_classic_dgl_api_works():
    g = dgl.heterograph(
        {("user", "interacts", "item"): (torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]))},
        num_nodes_dict={"user": 2, "item": 3},
    )
    frontier = dgl.sampling.sample_neighbors(g, {"item": torch.tensor([0])}, -1)
    block = dgl.to_block(frontier, dst_nodes={"item": torch.tensor([0]), "user": torch.tensor([], dtype=torch.int64)})
    assert sorted(block.srcnodes["user"].data[dgl.NID].tolist()) == [0, 1]


def test_graphbolt_stub_fails_with_a_clear_message():
    with pytest.raises(RuntimeError, match="GraphBolt"):
        dgl.graphbolt.fused_csc_sampling_graph  # noqa: B018


def test_dgl_imports_in_a_fresh_interpreter():
    code = "from sea_dist.graph.dgl_compat import dgl; import dgl.distributed; print(dgl.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("2.")


def test_no_module_imports_dgl_directly():
    package = pathlib.Path(__file__).resolve().parents[2] / "sea_dist"
    offenders = [
        str(path)
        for path in package.rglob("*.py")
        if path.name != "dgl_compat.py"
        and re.search(r"^\s*(import dgl|from dgl\b)", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []
