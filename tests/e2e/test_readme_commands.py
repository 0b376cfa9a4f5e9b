"""The README's commands, run exactly as written.

Every command in the README's ```bash blocks is listed in ``HOW`` with where it runs:

* ``ci``: ``.ci/run`` runs it verbatim (the install commands and ``pytest``);
* ``test``: a test below runs it verbatim, through ``bash`` in a scratch working directory that
  looks like a checkout (``jobs``, ``configs``, ``sea_dist`` linked to this one), so outputs and
  downloaded data never land in the repository. Only the environment differs from a user's: a
  private Ray temp dir, the shared dataset cache, S3 test credentials. Two exceptions, for CI
  time: the MovieLens training command and the S3 example get ``train.epochs=2`` appended (the
  MovieLens run's full 20-epoch result is docs/real-data.md's; the S3 example is about reading
  and publishing through S3, which two epochs do as twenty would; the quick start runs in
  full);
* ``external``: needs what no test machine has (a cloud account, a Kubernetes cluster, GPUs,
  hosts other than the package registries, or hours); the reason says what covers it instead.

``test_every_readme_command_is_accounted_for`` fails when the README gains a command that is in
none of them, or when a ``ci`` command is no longer in ``.ci/run`` verbatim.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.e2e.conftest import metrics_from_export, published_path, read_jsonl

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BASH = shutil.which("bash")

BENCHMARK = "external: a benchmark (minutes to hours); its results are committed under benchmarks/results/ and docs/"
HOW: dict[str, str] = {
    'pip install -c constraints.txt torch==2.13.0 -e ".[dev]"': "ci",
    "python jobs/train.py": "test: test_quick_start_and_real_data",
    "pytest": "ci",
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu":
        "external: reaches download.pytorch.org, which CI cannot; CI takes the same CPU wheel from disk "
        "through the install command above",
    'pip install -c constraints.txt torch==2.13.0 -e ".[examples]" && pip install -c constraints.txt --no-deps recbole==1.2.1': "ci",
    "python -m sea_dist.sources.examples movielens-100k --out data/ml-100k": "test: test_quick_start_and_real_data",
    "python jobs/train.py data.root=data/ml-100k --output-dir runs/ml-100k": "test: test_quick_start_and_real_data",
    "python jobs/train.py --help": "test: test_help",
    "python jobs/train.py --config configs/smoke.toml --full-graph": "test: test_full_graph",
    "python jobs/train.py --config configs/smoke.toml --output-dir runs/a graph.knn_k=20": "test: test_options",
    "python jobs/train.py --config configs/smoke.toml --output-dir runs/a graph.knn_k=20 --resume": "test: test_options",
    "python jobs/train.py --config configs/smoke.toml --output-dir runs/b --warm-start runs/a": "test: test_options",
    "python jobs/train.py data.root=s3://bucket/catalog data.s3_endpoint_url=http://127.0.0.1:9000 --output-dir s3://bucket/runs/nightly":
        "test: test_s3_example",
    "python jobs/train.py --gpus-per-worker 1 --num-workers 4":
        "external: needs 4 GPUs (NCCL); the GPU path is exercised by benchmarks/model_step.py --device cuda",
    "python jobs/prepare.py data.root=s3://bucket/catalog prepare.num_parts=8":
        "external: an AWS bucket (no endpoint override); tests/unit/test_prepare.py runs the same job against moto S3",
    "python jobs/train.py --config configs/catalog.toml data.root=s3://bucket/catalog train.num_workers=8":
        "external: an AWS bucket and 8 workers; tests/e2e/test_seaweedfs_job.py runs prepare and partitioned training on a local S3 server",
    "ray up -y cluster/aws-gpu.yaml && ray dashboard cluster/aws-gpu.yaml &":
        "external: an AWS account; tests/e2e/test_local_cluster.py checks the file against Ray's cluster schema",
    "ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train.py --config configs/reference.toml "
    "data.root=s3://BUCKET/catalog --output-dir s3://BUCKET/runs/r1 train.storage_path=s3://BUCKET/checkpoints "
    "train.num_workers=2 train.use_gpu=true train.gpus_per_worker=1 train.cpus_per_worker=3":
        "external: the AWS cluster above; the local-cluster commands below submit the same way",
    "cluster/local_cluster.sh up --workers 1 --head-cpus 3": "test: test_local_cluster_example",
    'source "$(cluster/local_cluster.sh env-file)"': "test: test_local_cluster_example",
    'ray job submit --address "$RAY_API_SERVER_ADDRESS" --working-dir . -- python jobs/train.py --config configs/smoke.toml --output-dir /tmp/sea-job':
        "test: test_local_cluster_example",
    "cluster/local_cluster.sh down": "test: test_local_cluster_example",
    "kubectl create namespace sea-dist": "external: a Kubernetes cluster with KubeRay; tests/unit/test_k8s_manifests.py validates k8s/ offline",
    "kubectl -n sea-dist create secret generic sea-dist-s3 --from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=...":
        "external: a Kubernetes cluster (placeholder keys)",
    "kubectl apply -k k8s/": "external: a Kubernetes cluster; tests/unit/test_k8s_manifests.py builds the same kustomization offline",
    "kubectl -n sea-dist create job --from=cronjob/sea-dist-nightly sea-dist-now-$(date +%s)":
        "external: a Kubernetes cluster; the launcher script runs against a stub kubectl in tests/unit/test_k8s_manifests.py",
    "python jobs/train.py metrics.port=9400 &": "test: test_metrics_example",
    "curl -s 127.0.0.1:9400/metrics | grep sea_dist_train_edges_total": "test: test_metrics_example",
    'pytest -m "not slow"': "external: the fast part of `pytest`, which CI runs whole",
    "python benchmarks/fidelity.py": BENCHMARK,
    "python benchmarks/throughput.py": BENCHMARK,
    "python benchmarks/accuracy.py": BENCHMARK,
    "python benchmarks/warm_start.py": BENCHMARK,
    "python benchmarks/scale.py": BENCHMARK,
    "python benchmarks/knn_recall.py": BENCHMARK,
    "python benchmarks/model_step.py --device cuda": "external: a CUDA GPU; " + BENCHMARK[len("external: "):],
}


def _strip_comment(line: str) -> str:
    """The line without a trailing shell comment (a # after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_commands() -> list[str]:
    """Every command of the README's ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            command = _strip_comment(line).strip()
            if command:
                commands.append(command)
    return commands


def test_every_readme_command_is_accounted_for():
    commands = readme_commands()
    missing = [c for c in commands if c not in HOW]
    assert not missing, "README commands no test, CI step or reason covers (add them to HOW):\n" + "\n".join(missing)
    stale = [c for c in HOW if c not in commands]
    assert not stale, "HOW lists commands the README no longer has:\n" + "\n".join(stale)
    ci = (REPO / ".ci" / "run").read_text()
    for command, how in HOW.items():
        assert how == "ci" or how.startswith(("test: ", "external: ")), how
        if how == "ci":
            assert command in ci, f".ci/run does not run the README's {command!r} as written"
        if how.startswith("test: "):
            name = how.split(": ", 1)[1]
            assert callable(globals().get(name)), f"{command!r}: no test {name}"
            assert command in RUNS.get(name, []), f"{name} does not run {command!r}"


# ------------------------------------------------------------------------------------------
# Running README commands
# ------------------------------------------------------------------------------------------
#: The commands each test runs, in order (each must be a README command, verbatim).
RUNS: dict[str, list[str]] = {
    "test_help": ["python jobs/train.py --help"],
    "test_quick_start_and_real_data": [
        "python jobs/train.py",
        "python -m sea_dist.sources.examples movielens-100k --out data/ml-100k",
        "python jobs/train.py data.root=data/ml-100k --output-dir runs/ml-100k",
    ],
    "test_full_graph": ["python jobs/train.py --config configs/smoke.toml --full-graph"],
    "test_options": [
        "python jobs/train.py --config configs/smoke.toml --output-dir runs/a graph.knn_k=20",
        "python jobs/train.py --config configs/smoke.toml --output-dir runs/a graph.knn_k=20 --resume",
        "python jobs/train.py --config configs/smoke.toml --output-dir runs/b --warm-start runs/a",
    ],
    "test_s3_example": [
        "python jobs/train.py data.root=s3://bucket/catalog data.s3_endpoint_url=http://127.0.0.1:9000 --output-dir s3://bucket/runs/nightly",
    ],
    "test_local_cluster_example": [
        "cluster/local_cluster.sh up --workers 1 --head-cpus 3",
        'source "$(cluster/local_cluster.sh env-file)"',
        'ray job submit --address "$RAY_API_SERVER_ADDRESS" --working-dir . -- python jobs/train.py --config configs/smoke.toml --output-dir /tmp/sea-job',
        "cluster/local_cluster.sh down",
    ],
    "test_metrics_example": [
        "python jobs/train.py metrics.port=9400 &",
        "curl -s 127.0.0.1:9400/metrics | grep sea_dist_train_edges_total",
    ],
}

#: What no successful run may print: the noise of Ray and its neighbours that the launcher and
#: the CLI filter (tracebacks Ray itself logs and survives, e.g. a transient timeout of its
#: autoscaler client on an overloaded machine, are Ray's business and not listed).
NOISE = ("Checkpoint successfully created", "Token authentication is", "PreemptionWatcher",
         "DGL backend not selected", "Setting the default backend", "[FailurePolicy]",
         "Found credentials", "Error in training function")


def _noise(log: str) -> list[str]:
    """The lines of ``log`` with NOISE."""
    return [line for line in log.splitlines() if any(n in line for n in NOISE)]


@pytest.fixture
def checkout(tmp_path):
    """A scratch working directory that looks like a checkout of this repository."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("jobs", "configs", "sea_dist", "cluster", "constraints.txt", "pyproject.toml"):
        (work / name).symlink_to(REPO / name)
    return work


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"))}
    env["SEA_DIST_RAY_TMPDIR"] = tempfile.mkdtemp(prefix="sea_ray_", dir="/tmp")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


def bash(command: str, cwd: Path, env: dict[str, str], timeout: float = 1800) -> subprocess.CompletedProcess:
    """One README command, verbatim, through bash (as a user's shell would run it)."""
    if BASH is None:
        pytest.skip("needs bash")
    python_dir = os.path.dirname(sys.executable)  # `python` is this interpreter, as in a venv
    env = dict(env, PATH=f"{python_dir}{os.pathsep}{env.get('PATH', '')}")
    if not (Path(python_dir) / "python").exists():
        link_dir = Path(tempfile.mkdtemp(prefix="sea_py_"))
        (link_dir / "python").symlink_to(sys.executable)
        env["PATH"] = f"{link_dir}{os.pathsep}{env['PATH']}"
    return subprocess.run([BASH, "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(result: subprocess.CompletedProcess, command: str) -> str:
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"{command!r} exited {result.returncode}:\n{log[-4000:]}"
    return log


def _epoch_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.search(r"epoch +\d+ \| loss", line)]


def _summary(output_dir: Path) -> dict:
    from sea_dist.ops.publish import Publisher

    return Publisher(str(output_dir)).read_published_json("summary.json")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_help():
    (command,) = RUNS["test_help"]
    log = _ok(bash(command, REPO, _env(), timeout=300), command)
    assert "usage: jobs/train.py" in log and "train.max_failures" in log and "output.republish" in log


#: The README's full runs (20 epochs, as a user gets them): minutes each on an idle 2-core
#: machine, far more on a loaded one; pytest's default 900 s is not enough for both.
LONG = 3600


@pytest.mark.slow
@pytest.mark.timeout(LONG)
def test_quick_start_and_real_data(checkout):
    """The quick start, then the real-data section, in one working directory as a user would:
    one line per epoch and nothing of Ray's noise; relative paths; one dataset per output dir."""
    pytest.importorskip("recbole", reason="the README's examples install (CI runs it)")
    env = _env()
    quick_start, build, real = RUNS["test_quick_start_and_real_data"]
    result = bash(quick_start, checkout, env, timeout=LONG)
    log = _ok(result, quick_start)
    summary = _summary(checkout / "runs" / "latest")
    epochs = _epoch_lines(result.stderr)
    assert len(epochs) == summary["epochs_run"] and len(set(epochs)) == len(epochs), epochs
    assert not _noise(log), _noise(log)
    assert "Recall@20" in result.stdout
    # what the README promises of the quick start's model (measured: test Recall@20 0.2727 vs
    # popularity 0.0559, 4.9x)
    test, popular = summary["test"]["recall@20"], summary["popularity_test_recall@20"]
    assert test >= 3 * popular, (test, popular)

    _ok(bash(build, checkout, env), build)
    assert (checkout / "data" / "ml-100k" / "dataset.json").is_file()
    log = _ok(bash(f"{real} train.epochs=2", checkout, env, timeout=LONG), real)
    summary = _summary(checkout / "runs" / "ml-100k")
    assert summary["dataset"]["name"] == json.loads((checkout / "data" / "ml-100k" / "dataset.json").read_text())["name"]
    assert summary["dataset"]["root"] == str(checkout / "data" / "ml-100k")  # resolved where the command ran
    assert not _noise(log), _noise(log)


@pytest.mark.slow
def test_full_graph(checkout):
    """The full-graph option on the smoke config: one process, no Ray, one line per epoch (the
    full-length full-graph run is the fidelity benchmark's, not CI's)."""
    (command,) = RUNS["test_full_graph"]
    result = bash(command, checkout, _env())
    log = _ok(result, command)
    summary = _summary(checkout / "runs" / "latest")
    assert summary["mode"] == "full_graph" and summary["epochs_run"] == 2
    assert len(_epoch_lines(result.stderr)) == 2
    assert not _noise(log), _noise(log)


@pytest.mark.slow
def test_options(checkout):
    """The option examples in one working directory: a file and overrides, --resume of that
    run, a warm start from its model (configs/smoke.toml keeps each to seconds of training);
    then the first run's exports checked by hand, and a --resume that adds an epoch."""
    env = _env()
    first, resume, warm = RUNS["test_options"]
    result = bash(first, checkout, env)
    log = _ok(result, first)
    summary = _summary(checkout / "runs" / "a")
    assert summary["config"]["graph"]["knn_k"] == 20 and summary["epochs_run"] == 2
    assert len(_epoch_lines(result.stderr)) == 2 and not _noise(log), _noise(log)

    # run a finished and is published: its resume has nothing left to train and starts no cluster
    log = _ok(bash(resume, checkout, env), resume)
    assert "nothing to resume" in log and "local Ray instance" not in log, log[-3000:]
    assert json.loads((checkout / "runs" / "a" / "run.json").read_text())["run_name"] == summary["config"]["train"]["run_name"]

    _ok(bash(warm, checkout, env), warm)
    warm_summary = _summary(checkout / "runs" / "b")
    assert warm_summary["warm_start"] and warm_summary["warm_start"]["source"].startswith(str(checkout / "runs" / "a"))

    # Run a, checked further (beyond the README's lines): a 2-worker Ray run published the
    # model it evaluated: the test metrics recomputed by hand (numpy) from its exported
    # embeddings equal the summary's, and it learned (measured: test Recall@20 0.174,
    # popularity 0.056, chance 0.010)
    run_a = checkout / "runs" / "a"
    assert summary["mode"] == "sampled" and summary["world_size"] == 2 and len(summary["peak_rss_mb_per_worker"]) == 2
    root = summary["dataset"]["root"]
    by_hand = metrics_from_export(run_a, root)
    test, popular = summary["test"], summary["popularity_test_recall@20"]
    for key in ("recall@20", "precision@20", "ndcg@20"):
        assert abs(test[key] - by_hand[key]) <= 1e-6, (key, test[key], by_hand[key])
    assert test["recall@20"] >= 2 * popular, (test["recall@20"], popular)
    assert popular >= 2 * by_hand["chance_recall@20"], (popular, by_hand["chance_recall@20"])
    assert summary["throughput"]["train_edges_per_s_per_worker"] > 0
    assert [r["epoch"] for r in read_jsonl(run_a / "metrics.jsonl")] == [0, 1]
    users = pq.read_table(published_path(run_a, "embeddings/users/part-00000.parquet"))
    items = pq.read_table(published_path(run_a, "embeddings/items/part-00000.parquet"))
    assert (users.num_rows, items.num_rows) == (summary["dataset"]["n_users"], summary["dataset"]["n_items"])
    assert users.schema.field("embedding").type.list_size == 2 * summary["config"]["model"]["embedding_dim"]
    # ... and `--resume` with more epochs continues it: epochs 0-1 are not trained again
    log = _ok(bash(f"{first} --resume --epochs 3", checkout, env), "resume to 3 epochs")
    assert "epoch    2" in log and "epoch    0 |" not in log, log[-3000:]
    assert [r["epoch"] for r in read_jsonl(run_a / "metrics.jsonl")] == [0, 1, 2]
    assert _summary(run_a)["epochs_run"] == 3


@pytest.fixture
def s3_on_9000(tiny_root, monkeypatch):
    """A moto S3 server on the README's endpoint (127.0.0.1:9000) with the tiny dataset at
    s3://bucket/catalog."""
    if not _port_free(9000):
        pytest.skip("127.0.0.1:9000 is taken by another process on this machine")
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "9000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **creds})
    try:
        import s3fs

        for key, value in creds.items():
            monkeypatch.setenv(key, value)
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": "http://127.0.0.1:9000"}, skip_instance_cache=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                fs.mkdir("bucket")
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        fs.put(tiny_root, "bucket/catalog", recursive=True)
        yield creds
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_s3_example(checkout, s3_on_9000):
    (command,) = RUNS["test_s3_example"]
    log = _ok(bash(f"{command} train.epochs=2", checkout, _env(**s3_on_9000)), command)
    from sea_dist.ops.publish import Publisher

    summary = Publisher("s3://bucket/runs/nightly", "http://127.0.0.1:9000").read_published_json("summary.json")
    assert summary["dataset"]["name"] == "tiny-e2e" and summary["epochs_run"] == 2
    assert summary["mode"] == "sampled" and summary["world_size"] == 2
    assert not _noise(log), _noise(log)


@pytest.mark.slow
def test_local_cluster_example(tmp_path):
    """The four lines of the local-cluster example as one shell session, in the repository (the
    job uploads it with --working-dir .): `ray job submit` to a head on loopback that
    cluster/local_cluster.sh started, the job's table reaching the submitter, and the training
    it ran (2 workers, the smoke config's 2 epochs). Before `down`, in the same session, a probe
    (tests/e2e/cluster_probe.py) records what the running cluster looks like from outside: both
    nodes alive through the dashboard's REST API (which refuses a caller without the token), a
    driver with the env file alone running a task on each node, `status`, and every socket its
    processes listen on (loopback, or all interfaces only where Ray binds them whatever the
    flags say); after `down`, nothing it started is left."""
    from tests.e2e import cluster_probe

    if shutil.which("setsid") is None:
        pytest.skip("needs setsid")
    port, dashboard = 26379, 28265  # the script's defaults, which the README's lines use
    if not (_port_free(port) and _port_free(dashboard)):
        pytest.skip("the script's default ports (26379, 28265) are taken by another cluster on this machine")
    shutil.rmtree("/tmp/sea-job", ignore_errors=True)
    up, source, submit, down = RUNS["test_local_cluster_example"]
    state = tmp_path / "cluster"
    env = _env(SEA_DIST_CLUSTER_DIR=str(state))
    env.setdefault("RAY_AUTH_MODE", "token")
    facts_path = tmp_path / "probe.json"
    probe = f"python -m tests.e2e.cluster_probe {facts_path}"
    script = f"set -e\n{up}\n{source}\ntrap 'cluster/local_cluster.sh down' EXIT\n{submit}\n{probe}\ntrap - EXIT\n{down}\n"
    try:
        log = _ok(bash(script, REPO, env), script)
        assert "succeeded" in log.lower() and "Recall@20" in log
        summary = _summary(Path("/tmp/sea-job"))
        assert summary["mode"] == "sampled" and summary["world_size"] == 2 and summary["epochs_run"] == 2
        facts = json.loads(facts_path.read_text())
    finally:
        purge = bash("cluster/local_cluster.sh down --purge", REPO, env, timeout=120)
        shutil.rmtree("/tmp/sea-job", ignore_errors=True)

    # the running cluster, as the probe saw it
    assert [name for name, _pid in facts["groups"]] == ["head", "worker-1"]
    assert facts["env"] == {"RAY_ADDRESS": f"127.0.0.2:{port}", "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard}"}
    assert facts["unauthorised_status"] == 401, "the dashboard answered without a token"
    assert facts["nodes_status"] == 200 and sorted(n["state"] for n in facts["nodes"]) == ["ALIVE", "ALIVE"]
    assert {n["node_ip"] for n in facts["nodes"]} == {"127.0.0.2"}
    assert sorted(n["is_head_node"] for n in facts["nodes"]) == [False, True]
    assert facts["driver_rc"] == 0, facts["driver"]
    driver = facts["driver"]
    assert len(driver["nodes"]) == 2 and {n["ip"] for n in driver["nodes"]} == {"127.0.0.2"}
    assert sorted(driver["ran_on"]) == sorted(n["id"] for n in driver["nodes"])
    assert facts["status_rc"] == 0 and "alive nodes: 2" in facts["status"], facts["status"]
    assert facts["listeners"], "found no listening socket of the cluster"
    problems, report = cluster_probe.judge_listeners(facts["listeners"], port, dashboard)
    print("local cluster listeners:\n  " + "\n  ".join(report))
    assert not problems, "\n".join(problems + ["all listeners:"] + report)

    # `down` stopped everything it started; `--purge` removed Ray's temp dir and the state
    assert purge.returncode == 0, purge.stdout + purge.stderr
    pgids = {pid for _name, pid in facts["groups"]}
    assert not cluster_probe.pids_in_groups(pgids), "processes of the cluster survived down"
    temp_dir = facts["conf"].get("RAY_TEMP_DIR", "")
    assert temp_dir.startswith("/tmp/ray-lc.") and not os.path.exists(temp_dir)
    leftovers = cluster_probe.processes_mentioning(temp_dir)
    assert not leftovers, f"processes of the cluster survived down: {leftovers}"
    assert not state.exists()


@pytest.mark.slow
def test_metrics_example(checkout):
    """The training job in the background, then the README's curl until the series shows up
    (polled: the worker serves it once training starts); the job is then stopped (SIGTERM: a
    background job of a non-interactive shell ignores SIGINT)."""
    if not (_port_free(9400) and _port_free(9399)):
        pytest.skip("port 9400 or 9399 is taken on this machine")
    start, curl = RUNS["test_metrics_example"]
    # The README's curl, verbatim, until its output holds a sample (the series is declared, so
    # grep finds its HELP line, before the first batch is counted).
    script = (f"{start}\njob=$!\ntrap 'kill $job 2>/dev/null; wait $job' EXIT\n"
              f"for i in $(seq 600); do\n"
              f"  out=$({curl}) && case \"$out\" in *'sea_dist_train_edges_total{{'*) echo \"$out\"; exit 0;; esac\n"
              f"  kill -0 $job 2>/dev/null || exit 1  # the job ended without serving a sample\n"
              f"  sleep 1\ndone\nexit 1\n")
    result = bash(script, checkout, _env(), timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert re.search(r"^sea_dist_train_edges_total\{.*\} [0-9.e+]+$", result.stdout, re.M), result.stdout
