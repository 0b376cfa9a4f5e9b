"""cluster/: the local multi-node Ray cluster script, and the AWS launcher config.

The slow test starts a head and one worker node with ``cluster/local_cluster.sh`` in a temp state
dir, checks both nodes are alive (the dashboard's REST API and a driver that runs a task on each
node), checks what the cluster's processes listen on, then ``down`` and checks every process it
started is gone. Findings on Ray 2.60 (documented in the script and docs/cluster.md):

* ``--node-ip-address 127.0.0.1`` is silently replaced by the machine's outward address, so the
  script uses 127.0.0.2 (also loopback on Linux);
* the dashboard, dashboard agents (HTTP), runtime-env agents and the Ray client server then
  listen on loopback only;
* Ray's gRPC servers (GCS, raylets, dashboard-agent gRPC, worker processes) and the head's
  autoscaler/dashboard Prometheus endpoints bind all interfaces whatever the flags say. The test
  accepts exactly those (on the ports the script assigned, or from ``ray::`` worker processes)
  and fails on anything else, in particular any socket on a non-loopback address.
"""
from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "cluster" / "local_cluster.sh"
BASH = shutil.which("bash")


# ------------------------------------------------------------------------------------------
# The AWS launcher config (fast: schema only)
# ------------------------------------------------------------------------------------------
def test_aws_launcher_config_validates():
    """``cluster/aws-gpu.yaml`` passes Ray's own cluster-config schema (what ``ray up`` runs)."""
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    gpu = raw["available_node_types"]["gpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))
    assert 0 <= gpu["min_workers"] <= gpu["max_workers"] <= raw["max_workers"]
    assert any("pip install" in c and "sea_dist" in c for c in raw["setup_commands"])
    assert "." in raw["file_mounts"].values()
    head = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--num-cpus=0" in head


# ------------------------------------------------------------------------------------------
# The local cluster
# ------------------------------------------------------------------------------------------
def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _free_base(width: int) -> int:
    """A base port with base..base+width-1 free, below Linux's ephemeral range and above
    Ray's worker range 10002-19999."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - width)
        if all(_port_free(p) for p in range(base, base + width)):
            return base
    raise RuntimeError("no free port block")


def _run(args, env, timeout):
    return subprocess.run([BASH, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"export (\w+)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pids_in_groups(pgids: set[int]) -> dict[int, str]:
    """``{pid: name}`` of every process whose process group is one of ``pgids``."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getpgid(pid) in pgids:
                out[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    return out


def _listeners(pids: set[int]) -> list[tuple[str, int, str]]:
    """``(address, port, process name)`` of TCP listeners owned by ``pids``: ``ss -ltnpH`` if
    available, else psutil."""
    found = []
    if shutil.which("ss"):
        text = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30).stdout
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 6:
                continue
            local, process = fields[3], " ".join(fields[5:])
            owners = {int(p) for p in re.findall(r"pid=(\d+)", process)}
            if not owners & pids:
                continue
            address, _, port = local.rpartition(":")
            name = (re.findall(r'\(\("([^"]+)"', process) or ["?"])[0]
            found.append((address.strip("[]"), int(port), name))
        return found
    psutil = pytest.importorskip("psutil")
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            found.append((conn.laddr.ip, conn.laddr.port, psutil.Process(conn.pid).name()))
    return found


def _is_loopback(address: str) -> bool:
    address = address.removeprefix("::ffff:")
    return address.startswith("127.") or address == "::1"


def _is_wildcard(address: str) -> bool:
    return address in ("*", "0.0.0.0", "::", "")


DRIVER = r"""
import json, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init()
nodes = [n for n in ray.nodes() if n["Alive"]]
@ray.remote(num_cpus=1)
def where():
    return ray.get_runtime_context().get_node_id()
ran_on = ray.get([
    where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
    for n in nodes
])
print(json.dumps({"nodes": [{"id": n["NodeID"], "ip": n["NodeManagerAddress"]} for n in nodes],
                  "ran_on": ran_on}))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(BASH is None or shutil.which("setsid") is None, reason="needs bash and setsid")
def test_local_cluster_up_status_down(tmp_path):
    started = time.monotonic()
    state = tmp_path / "state"
    base = _free_base(40)
    port, dashboard = base, base + 30  # head: base..base+9, worker 1: base+11..base+16
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"))}
    env.setdefault("RAY_AUTH_MODE", "token")
    up = _run(["up", "--state-dir", str(state), "--workers", "1", "--port", str(port),
               "--dashboard-port", str(dashboard), "--timeout", "120"], env, timeout=180)
    nodes_file = state / "nodes"
    recorded = [line.split() for line in nodes_file.read_text().splitlines()] if nodes_file.exists() else []
    pgids = {int(pid) for _name, pid in recorded}
    conf = dict(line.split("=", 1) for line in (state / "cluster.conf").read_text().splitlines()) \
        if (state / "cluster.conf").exists() else {}
    report = []
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert [name for name, _pid in recorded] == ["head", "worker-1"]
        up_s = time.monotonic() - started

        # 1. Both nodes alive, seen through the dashboard's REST API (token required).
        cluster_env = _read_env_file(state / "cluster.env")
        assert cluster_env["RAY_ADDRESS"] == f"127.0.0.2:{port}"
        api = cluster_env["RAY_API_SERVER_ADDRESS"]
        assert api == f"http://127.0.0.1:{dashboard}"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{api}/api/version", timeout=10)
        assert refused.value.code == 401, "the dashboard answered without a token"
        request = urllib.request.Request(f"{api}/api/v0/nodes?limit=100")
        token_path = cluster_env.get("RAY_AUTH_TOKEN_PATH")
        if token_path:
            request.add_header("Authorization", f"Bearer {Path(token_path).read_text().strip()}")
        rows = json.loads(urllib.request.urlopen(request, timeout=10).read())["data"]["result"]["result"]
        assert sorted(r["state"] for r in rows) == ["ALIVE", "ALIVE"]
        assert {r["node_ip"] for r in rows} == {"127.0.0.2"}
        assert sorted(r["is_head_node"] for r in rows) == [False, True]

        # 2. A driver connects with the env file alone and runs a task on each node.
        driver_env = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH_TOKEN")}
        driver_env.update(cluster_env)
        driver = subprocess.run([sys.executable, "-c", DRIVER], env=driver_env, capture_output=True,
                                text=True, timeout=120, cwd=tmp_path)
        assert driver.returncode == 0, driver.stderr[-3000:]
        result = json.loads(driver.stdout.strip().splitlines()[-1])
        assert len(result["nodes"]) == 2 and {n["ip"] for n in result["nodes"]} == {"127.0.0.2"}
        assert sorted(result["ran_on"]) == sorted(n["id"] for n in result["nodes"])

        status = _run(["status", "--state-dir", str(state)], env, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "alive nodes: 2" in status.stdout

        # 3. What the cluster listens on.
        procs = _pids_in_groups(pgids)
        listeners = _listeners(set(procs))
        assert listeners, "found no listening socket of the cluster"
        head, worker = port + 1, port + 11  # first port of each node's block
        loopback_only = {dashboard, head + 2, head + 4, head + 6, worker + 2, worker + 4}
        wildcard_ok = {port, head, head + 1, head + 3, head + 7, head + 8, worker, worker + 1, worker + 3}
        problems = []
        for address, lport, name in sorted(set(listeners), key=lambda r: (r[1], r[0])):
            kind = "loopback" if _is_loopback(address) else "ALL" if _is_wildcard(address) else "OTHER"
            report.append(f"{address or '*'}:{lport} {name} [{kind}]")
            if kind == "loopback":
                continue
            if kind == "OTHER":
                problems.append(f"{name} listens on non-loopback address {address}:{lport}")
            elif lport in loopback_only:
                problems.append(f"{name} listens on all interfaces on {lport}, which should be loopback")
            elif lport not in wildcard_ok and not name.startswith("ray::"):
                problems.append(f"{name} listens on all interfaces on unexpected port {lport}")
        assert {dashboard, head + 2, worker + 2} <= {p for a, p, _n in listeners if _is_loopback(a)}
        assert not problems, "\n".join(problems + ["all listeners:"] + report)
    finally:
        down = _run(["down", "--state-dir", str(state), "--purge"], env, timeout=120)
        print(f"local cluster: up + checks {time.monotonic() - started:.1f}s; listeners:\n  "
              + "\n  ".join(report))
    assert down.returncode == 0, down.stdout + down.stderr

    # 4. Everything it started is gone, and nothing else was touched.
    assert pgids and not [g for g in pgids if _group_alive(g)]
    temp_dir = conf.get("RAY_TEMP_DIR", "")
    assert temp_dir.startswith("/tmp/ray-lc.") and not os.path.exists(temp_dir)
    leftovers = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if temp_dir in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                    leftovers.append(entry)
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                continue
    assert not leftovers, f"processes of the cluster survived down: {leftovers}"
    assert not state.exists()
    print(f"local cluster: up in {up_s:.1f}s")


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_local_cluster_refuses_unsafe_settings(tmp_path):
    env = dict(os.environ)
    state = str(tmp_path / "s")
    bad_ip = _run(["up", "--state-dir", state, "--node-ip", "127.0.0.1"], env, timeout=60)
    assert bad_ip.returncode != 0 and "127.0.0.2" in bad_ip.stderr
    bad_port = _run(["up", "--state-dir", state, "--port", "12000"], env, timeout=60)
    assert bad_port.returncode != 0 and "10002-19999" in bad_port.stderr
    nothing = _run(["down", "--state-dir", state], env, timeout=60)
    assert nothing.returncode == 0
    status = _run(["status", "--state-dir", state], env, timeout=60)
    assert status.returncode == 3
