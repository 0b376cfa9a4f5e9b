"""What a running ``cluster/local_cluster.sh`` cluster looks like from outside, as JSON.

Run inside the shell that sourced the cluster's env file, while the cluster is up:

    python -m tests.e2e.cluster_probe OUT.json

It only collects facts (the dashboard's answers with and without the token, a driver that
runs a task on every node, ``status``, every TCP listener of the cluster's process groups);
the test that ran the README's local-cluster example judges them (``judge_listeners`` and the
assertions there). Collected inside the README's own shell session, so the example's single
cluster serves both the job and these checks: a second cluster start-up costs CI ~25 s.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "cluster" / "local_cluster.sh"

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


def read_conf(state_dir: Path) -> dict[str, str]:
    """``cluster.conf``: what ``up`` decided (ports, Ray's temp dir, ...)."""
    path = state_dir / "cluster.conf"
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line) if path.exists() else {}


def node_groups(state_dir: Path) -> list[tuple[str, int]]:
    """(node name, pid = process-group id) of every node ``up`` recorded."""
    path = state_dir / "nodes"
    return [(name, int(pid)) for name, pid in (line.split() for line in path.read_text().splitlines())] \
        if path.exists() else []


def pids_in_groups(pgids: set[int]) -> dict[int, str]:
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


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (a cluster's Ray temp dir: its leftovers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if text in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return found


def listeners(pids: set[int]) -> list[tuple[str, int, str]]:
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
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            found.append((conn.laddr.ip, conn.laddr.port, psutil.Process(conn.pid).name()))
    return found


def is_loopback(address: str) -> bool:
    address = address.removeprefix("::ffff:")
    return address.startswith("127.") or address == "::1"


def is_wildcard(address: str) -> bool:
    return address in ("*", "0.0.0.0", "::", "")


def judge_listeners(found: list, port: int, dashboard: int) -> tuple[list[str], list[str]]:
    """(problems, report) for a head + one worker node on the script's port layout: loopback is
    always fine; all-interface sockets only where Ray binds them whatever the flags say (its gRPC
    servers and the head's two Prometheus endpoints, on the ports the script assigned, or
    ``ray::`` worker processes on ports the OS picked); any other address is a problem."""
    head, worker = port + 1, port + 11  # first port of each node's block
    loopback_only = {dashboard, head + 2, head + 4, head + 6, worker + 2, worker + 4}
    wildcard_ok = {port, head, head + 1, head + 3, head + 7, head + 8, worker, worker + 1, worker + 3}
    problems, report = [], []
    for address, lport, name in sorted({tuple(f) for f in found}, key=lambda r: (r[1], r[0])):
        kind = "loopback" if is_loopback(address) else "ALL" if is_wildcard(address) else "OTHER"
        report.append(f"{address or '*'}:{lport} {name} [{kind}]")
        if kind == "loopback":
            continue
        if kind == "OTHER":
            problems.append(f"{name} listens on non-loopback address {address}:{lport}")
        elif lport in loopback_only:
            problems.append(f"{name} listens on all interfaces on {lport}, which should be loopback")
        elif lport not in wildcard_ok and not name.startswith("ray::"):
            problems.append(f"{name} listens on all interfaces on unexpected port {lport}")
    missing = {dashboard, head + 2, worker + 2} - {p for a, p, _n in found if is_loopback(a)}
    problems += [f"nothing listens on loopback port {p}" for p in sorted(missing)]
    return problems, report


def _http_status(url: str, token: str | None) -> tuple[int, object]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def probe() -> dict:
    """Every fact the test judges, from the environment the cluster's env file set."""
    state = Path(os.environ["SEA_DIST_CLUSTER_DIR"])
    conf = read_conf(state)
    api = os.environ["RAY_API_SERVER_ADDRESS"]
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    token = Path(token_path).read_text().strip() if token_path else None
    unauthorised, _ = _http_status(f"{api}/api/version", None)
    code, body = _http_status(f"{api}/api/v0/nodes?limit=100", token)
    rows = body["data"]["result"]["result"] if code == 200 else []
    driver = subprocess.run([sys.executable, "-c", DRIVER], capture_output=True, text=True, timeout=120)
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True, timeout=60)
    groups = node_groups(state)
    pgids = {pid for _name, pid in groups}
    return {
        "conf": conf,
        "env": {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")},
        "unauthorised_status": unauthorised,
        "nodes_status": code,
        "nodes": [{k: r.get(k) for k in ("state", "node_ip", "is_head_node")} for r in rows],
        "driver_rc": driver.returncode,
        "driver": json.loads(driver.stdout.strip().splitlines()[-1]) if driver.returncode == 0 else driver.stderr[-3000:],
        "status_rc": status.returncode,
        "status": status.stdout + status.stderr,
        "groups": groups,
        "listeners": listeners(set(pids_in_groups(pgids))),
    }


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(probe(), indent=1))
