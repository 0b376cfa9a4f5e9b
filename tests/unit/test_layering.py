"""Distributed and DGL concerns stay out of the model package."""
import pathlib
import re

MODEL = pathlib.Path(__file__).resolve().parents[2] / "sea_dist" / "model"


def test_model_package_is_plain_torch():
    forbidden = re.compile(r"^\s*(import|from)\s+(ray|dgl|torch\.distributed|sea_dist\.(train|graph))\b", re.M)
    offenders = [p.name for p in MODEL.rglob("*.py") if forbidden.search(p.read_text())]
    assert offenders == []
