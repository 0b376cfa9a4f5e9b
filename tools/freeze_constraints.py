#!/usr/bin/env python
"""Print constraints.txt: the installed version of every package sea_dist[dev,examples] needs.

    python tools/freeze_constraints.py > constraints.txt

Walks the dependency closure of the project's declared requirements (pyproject.toml: the
dependencies and the dev and examples extras) through the installed packages' metadata, with environment markers evaluated for this interpreter, and
pins each package to the version installed here: the versions CI tested. ``pip install -c
constraints.txt ...`` (CI, the Dockerfile) then reproduces them; packages another platform
needs (e.g. the CUDA wheels of a CUDA torch build) are not listed and stay free.
Local version labels are dropped (``torch 2.13.0+cpu`` is pinned as ``torch==2.13.0``, which
the CPU and the CUDA builds both satisfy).
"""
from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
EXTRAS = ("dev", "examples")
#: Installed beside the project with --no-deps (README, .ci/run): pinned, not walked.
EXTRA_ROOTS = ("recbole",)


def declared() -> list[Requirement]:
    """The project's own requirements that apply here (markers evaluated)."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    texts = list(project["dependencies"])
    for extra in EXTRAS:
        texts += project["optional-dependencies"][extra]
    reqs = [Requirement(t) for t in texts]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def closure() -> dict[str, str]:
    pins: dict[str, str] = {}
    pending = [(r.name, tuple(sorted(r.extras))) for r in declared()] + [(name, ()) for name in EXTRA_ROOTS]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while pending:
        name, extras = pending.pop()
        key = (canonicalize_name(name), extras)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"{name} is required but not installed: install the project first")
        pins[key[0]] = Version(dist.version).public
        if key[0] in map(canonicalize_name, EXTRA_ROOTS):
            continue  # installed with --no-deps
        for text in dist.requires or []:
            req = Requirement(text)
            environments = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in environments):
                continue
            pending.append((req.name, tuple(sorted(req.extras))))
    return pins


def main() -> int:
    pins = closure()
    print("# Versions CI tests (python tools/freeze_constraints.py > constraints.txt; Python "
          f"{sys.version_info.major}.{sys.version_info.minor}, Linux x86_64).")
    print('# Used as pip install -c constraints.txt ... by .ci/run and the Dockerfile.')
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
