"""Make ``import dgl`` work with DGL 2.1.0 under the torch we pin (2.13).

Why this exists: DGL 2.1.0 is the newest DGL wheel on PyPI, but it ships native GraphBolt
libraries only for torch 2.0-2.2 (one ``.so`` per exact torch version, dmlc/dgl#7251), and
``dgl.distributed`` imports ``dgl.graphbolt`` eagerly. GraphBolt also imports
``torchdata.datapipes``, which current torchdata removed. Separately, ``dgl.utils`` falls back
to ``setuptools.extern.packaging`` when ``packaging`` is missing, a path that recent setuptools
removed. We use neither GraphBolt nor that fallback: we sample with the classic
``dgl.sampling`` API and partition with ``dgl.distributed.partition_graph`` (non-GraphBolt
format), which were measured to work under torch 2.13 with this shim in place.

What it does: before ``dgl`` is imported, it registers a stand-in module for ``dgl.graphbolt``
whose few names that DGL's classic code paths *mention* (only in ``isinstance`` checks) are
inert placeholder classes; anything else raises a clear error instead of a crash deep inside a
native library. It also aliases ``setuptools.extern.packaging`` to ``packaging``.

When to delete it: once a DGL wheel for our torch exists on PyPI (DGL >= 2.4 publishes its
own wheels off PyPI, dmlc/dgl#7825), pin that, delete this module, and replace
``from sea_dist.graph.dgl_compat import dgl`` with ``import dgl``.

Every module in sea_dist that needs DGL imports it from here, never directly.
"""
from __future__ import annotations

import importlib
import sys
import types

__all__ = ["dgl", "GRAPHBOLT_STUB_NAME"]

GRAPHBOLT_STUB_NAME = "dgl.graphbolt"


class _UnavailableGraphBoltType:
    """Placeholder for GraphBolt classes that DGL only uses in ``isinstance`` checks."""

    def __init__(self, *args, **kwargs):  # pragma: no cover - never constructed by our code
        raise RuntimeError(_graphbolt_message("constructing a GraphBolt graph"))


def _graphbolt_message(what: str) -> str:
    return (
        f"{what} needs DGL GraphBolt, which the PyPI DGL 2.1.0 wheel cannot load under "
        "this torch version; sea_dist uses DGL's classic sampling and partition formats instead "
        "(see sea_dist/graph/dgl_compat.py)"
    )


def _make_graphbolt_stub() -> types.ModuleType:
    stub = types.ModuleType(GRAPHBOLT_STUB_NAME)
    stub.__doc__ = "sea_dist stand-in for dgl.graphbolt (see sea_dist.graph.dgl_compat)."
    stub.FusedCSCSamplingGraph = type(
        "FusedCSCSamplingGraph", (_UnavailableGraphBoltType,), {}
    )
    stub.__sea_dist_stub__ = True

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(_graphbolt_message(f"dgl.graphbolt.{name}"))

    stub.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return stub


def _install_shims() -> None:
    if GRAPHBOLT_STUB_NAME not in sys.modules:
        sys.modules[GRAPHBOLT_STUB_NAME] = _make_graphbolt_stub()
    try:
        import packaging.version  # noqa: F401

        sys.modules.setdefault("setuptools.extern.packaging", sys.modules["packaging"])
        sys.modules.setdefault("setuptools.extern.packaging.version", packaging.version)
    except ImportError:  # pragma: no cover - packaging is a declared dependency
        pass


def _import_dgl() -> types.ModuleType:
    if "dgl" in sys.modules and not getattr(
        sys.modules.get(GRAPHBOLT_STUB_NAME), "__sea_dist_stub__", False
    ):
        # dgl was imported before us: it either worked natively or is half-imported.
        return sys.modules["dgl"]
    _install_shims()
    module = importlib.import_module("dgl")
    # dgl/__init__ binds the real submodule attribute; point it at the stub for consistency.
    module.graphbolt = sys.modules[GRAPHBOLT_STUB_NAME]
    return module


dgl = _import_dgl()
