#!/usr/bin/env bash
# A local multi-node Ray cluster on one machine, on loopback, for testing sea_dist the way it
# runs on a real cluster (several raylets, `ray job submit`, object transfer between nodes).
#
#   cluster/local_cluster.sh up [--workers N] [options]   # head + N worker nodes
#   source "$(cluster/local_cluster.sh env-file)"         # RAY_ADDRESS, token, dashboard URL
#   ray job submit --working-dir . -- python jobs/train.py --config configs/smoke.toml
#   cluster/local_cluster.sh status                       # nodes, PIDs, alive count
#   cluster/local_cluster.sh listeners                    # what its processes listen on
#   cluster/local_cluster.sh down [--purge]               # stops only what `up` started
#
# Every node is one `ray start --block` process started in its own session (setsid), so its
# PID is also the process-group id of every Ray process of that node. `down` signals those
# recorded PIDs (SIGTERM: Ray drains and stops its children), then their process groups; it never
# runs `ray stop`, which would end every Ray cluster on the machine.
#
# Loopback: Ray replaces 127.0.0.1/localhost given as --node-ip-address by the machine's
# outward address, so nodes use another loopback address (127.0.0.2 by default; any 127.x.y.z
# works on Linux). The dashboard, dashboard agents, runtime-env agents and the client server then
# listen on loopback only. What Ray 2.60 binds to all interfaces whatever the flags say: its gRPC
# servers (GCS, raylets, dashboard-agent gRPC, every worker process) and, on the head, the
# autoscaler's and the dashboard's small Prometheus endpoints (ports P+8, P+9 here). Token
# authentication (on by default here, RAY_AUTH_MODE=token) makes the gRPC servers refuse callers
# without the cluster's token. Ray's per-node metrics exporter (also 0.0.0.0) is off unless
# --ray-metrics. `listeners` shows what is open.
#
# Options (also for status/down/listeners: --state-dir):
#   --state-dir DIR      state, logs and env file (default: $SEA_DIST_CLUSTER_DIR or
#                        /tmp/sea-dist-local-cluster-$UID)
#   --workers N          worker nodes besides the head (default 1)
#   --port P             GCS port (default 26379). Node k (head = 0) uses P+1+10k .. P+6+10k
#                        for its node manager, object manager, dashboard agent (HTTP, gRPC),
#                        runtime-env agent and metrics; the head also P+7 .. P+9 for the Ray
#                        client server and the autoscaler's and dashboard's own metrics (Ray's
#                        defaults 44217/44227 would collide between clusters). All must lie
#                        outside Ray's worker port range 10002-19999; worker processes take
#                        ports the OS picks (--min/max-worker-port 0).
#   --dashboard-port D   dashboard / job API port on 127.0.0.1 (default 28265)
#   --node-ip IP         loopback address for every node (default 127.0.0.2)
#   --head-cpus C        CPUs the head advertises (default 1)
#   --worker-cpus C      CPUs each worker node advertises (default 1)
#   --object-store-mb M  object store per node in MiB (default 256)
#   --temp-dir T         Ray's temp root (default: a short fresh dir under /tmp; Unix socket
#                        paths limit it to ~40 characters)
#   --timeout S          seconds to wait for the cluster (default 120)
#   --ray-metrics        keep Ray's own metrics exporter (binds 0.0.0.0)
#   --purge              (down) also delete the state dir and Ray's temp dir
# Environment: RAY_AUTH_MODE (default token; `disabled` turns authentication off),
# RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH (else ~/.ray/auth_token, else a fresh token in the state
# dir), RAY (the ray executable), PYTHON (python3 used for small helpers).
set -euo pipefail

die() { echo "local_cluster: $*" >&2; exit 1; }
log() { echo "local_cluster: $*" >&2; }

CMD=${1:-help}
[ $# -gt 0 ] && shift

STATE_DIR=${SEA_DIST_CLUSTER_DIR:-/tmp/sea-dist-local-cluster-$(id -u)}
WORKERS=1
PORT=26379
DASHBOARD_PORT=28265
NODE_IP=127.0.0.2
HEAD_CPUS=1
WORKER_CPUS=1
OBJECT_STORE_MB=256
TEMP_DIR=""
TIMEOUT=120
RAY_METRICS=0
PURGE=0
RAY=${RAY:-ray}
PYTHON=${PYTHON:-python3}

while [ $# -gt 0 ]; do
    case "$1" in
        --state-dir) STATE_DIR=$2; shift 2 ;;
        --workers) WORKERS=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --dashboard-port) DASHBOARD_PORT=$2; shift 2 ;;
        --node-ip) NODE_IP=$2; shift 2 ;;
        --head-cpus) HEAD_CPUS=$2; shift 2 ;;
        --worker-cpus) WORKER_CPUS=$2; shift 2 ;;
        --object-store-mb) OBJECT_STORE_MB=$2; shift 2 ;;
        --temp-dir) TEMP_DIR=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --ray-metrics) RAY_METRICS=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h | --help) CMD=help; shift ;;
        *) die "unknown option $1 (see: $0 help)" ;;
    esac
done

NODES_FILE=$STATE_DIR/nodes          # one line per node: name pid
ENV_FILE=$STATE_DIR/cluster.env      # `source` it to talk to the cluster
CONF_FILE=$STATE_DIR/cluster.conf    # what `up` decided (ports, temp dir, ...)

is_int() { case "$1" in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac; }

pid_alive() { [ -n "$1" ] && kill -0 "$1" 2> /dev/null; }

# The recorded PID still runs one of *our* nodes (guards against PID reuse).
pid_is_ours() {
    local pid=$1 cmdline
    pid_alive "$pid" || return 1
    cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2> /dev/null) || return 1
    case "$cmdline" in *"ray start"*"--temp-dir $RAY_TEMP_DIR"*) return 0 ;; esac
    return 1
}

group_alive() { [ -n "$1" ] && kill -0 -- "-$1" 2> /dev/null; }

load_conf() {
    [ -f "$CONF_FILE" ] || return 1
    # shellcheck disable=SC1090
    . "$CONF_FILE"
}

node_pids() { [ -f "$NODES_FILE" ] && awk '{print $2}' "$NODES_FILE" || true; }

port_block() {  # node index -> its first port
    echo $((PORT + 1 + 10 * $1))
}

check_port() {
    local port=$1 what=$2
    is_int "$port" || die "$what: '$port' is not a port number"
    [ "$port" -ge 1024 ] && [ "$port" -le 65535 ] || die "$what: port $port out of 1024-65535"
    if [ "$port" -ge 10002 ] && [ "$port" -le 19999 ]; then
        die "$what: port $port lies in Ray's worker port range 10002-19999"
    fi
    "$PYTHON" - "$port" << 'PY' || die "$what: port $port is already in use"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
try:
    s.bind(("0.0.0.0", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

dashboard_get() {  # path -> body on stdout (uses the cluster token)
    "$PYTHON" - "http://127.0.0.1:$DASHBOARD_PORT$1" << 'PY'
import os, sys, urllib.request
req = urllib.request.Request(sys.argv[1])
token = os.environ.get("RAY_AUTH_TOKEN")
path = os.environ.get("RAY_AUTH_TOKEN_PATH")
if not token and path and os.path.exists(path):
    token = open(path).read().strip()
if token and os.environ.get("RAY_AUTH_MODE", "token") == "token":
    req.add_header("Authorization", f"Bearer {token}")
try:
    print(urllib.request.urlopen(req, timeout=3).read().decode())
except Exception as error:
    sys.stderr.write(f"{error}\n")
    sys.exit(1)
PY
}

alive_nodes() {  # number of ALIVE nodes the dashboard reports ("" if unreachable)
    dashboard_get "/api/v0/nodes?limit=1000" 2> /dev/null | "$PYTHON" -c '
import json, sys
try:
    rows = json.load(sys.stdin)["data"]["result"]["result"]
except Exception:
    sys.exit(1)
print(sum(1 for r in rows if r.get("state") == "ALIVE"))
' 2> /dev/null || true
}

setup_auth() {
    RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
    export RAY_AUTH_MODE
    TOKEN_PATH=""
    [ "$RAY_AUTH_MODE" = token ] || return 0
    if [ -n "${RAY_AUTH_TOKEN:-}" ]; then
        return 0  # inherited by the nodes; drivers need the same RAY_AUTH_TOKEN
    fi
    if [ -n "${RAY_AUTH_TOKEN_PATH:-}" ] && [ -r "$RAY_AUTH_TOKEN_PATH" ]; then
        TOKEN_PATH=$RAY_AUTH_TOKEN_PATH
    elif [ -r "$HOME/.ray/auth_token" ]; then
        TOKEN_PATH=$HOME/.ray/auth_token
    else
        TOKEN_PATH=$STATE_DIR/auth_token
        (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' > "$TOKEN_PATH")
    fi
    export RAY_AUTH_TOKEN_PATH=$TOKEN_PATH
}

start_node() {  # name, ray start args... ; records "name pid"
    local name=$1 pid
    shift
    # exec setsid: the node's `ray start` gets its own session and process group, PID = PGID.
    (exec setsid "$RAY" start --block "$@" > "$STATE_DIR/logs/$name.log" 2>&1 < /dev/null) &
    pid=$!
    echo "$name $pid" >> "$NODES_FILE"
    log "started $name (pid $pid), log $STATE_DIR/logs/$name.log"
}

node_args() {  # node index, cpus -> the per-node ray start flags
    local base
    base=$(port_block "$1")
    echo "--node-ip-address $NODE_IP --temp-dir $RAY_TEMP_DIR --num-cpus $2 --num-gpus 0" \
        "--object-store-memory $((OBJECT_STORE_MB * 1024 * 1024))" \
        "--node-manager-port $base --object-manager-port $((base + 1))" \
        "--dashboard-agent-listen-port $((base + 2)) --dashboard-agent-grpc-port $((base + 3))" \
        "--runtime-env-agent-port $((base + 4)) --metrics-export-port $((base + 5))" \
        "--min-worker-port 0 --max-worker-port 0 --disable-usage-stats"
}

fail_up() {
    log "$1"
    if [ -f "$NODES_FILE" ]; then
        while read -r name _pid; do
            log "---- last lines of $name.log"
            tail -n 15 "$STATE_DIR/logs/$name.log" >&2 || true
        done < "$NODES_FILE"
    fi
    cmd_down > /dev/null 2>&1 || true
    exit 1
}

cmd_up() {
    mkdir -p "$STATE_DIR/logs"
    if load_conf 2> /dev/null; then
        for pid in $(node_pids); do
            pid_is_ours "$pid" && die "a cluster from $STATE_DIR is running (pid $pid); run down first"
        done
    fi
    rm -f "$NODES_FILE" "$ENV_FILE" "$CONF_FILE"
    is_int "$WORKERS" || die "--workers must be a number"
    case "$NODE_IP" in
        127.0.0.1 | localhost | ::1) die "--node-ip $NODE_IP: Ray replaces it by the machine's outward address; use e.g. 127.0.0.2" ;;
        127.*) ;;
        *) log "warning: --node-ip $NODE_IP is not a loopback address" ;;
    esac
    command -v "$RAY" > /dev/null || die "ray not found (pip install 'ray[default]')"
    command -v setsid > /dev/null || die "setsid not found (util-linux)"

    check_port "$PORT" "GCS"
    check_port "$DASHBOARD_PORT" "dashboard"
    local k j base
    for k in $(seq 0 "$WORKERS"); do
        base=$(port_block "$k")
        for j in 0 1 2 3 4 5 6 7 8; do
            [ "$k" -gt 0 ] && [ "$j" -ge 6 ] && continue
            check_port $((base + j)) "node $k"
        done
    done

    if [ -z "$TEMP_DIR" ]; then
        RAY_TEMP_DIR=$(mktemp -d /tmp/ray-lc.XXXXXX)
    else
        [ "${#TEMP_DIR}" -le 40 ] || die "--temp-dir $TEMP_DIR is too long for Ray's Unix sockets (max 40 characters)"
        RAY_TEMP_DIR=$TEMP_DIR
        mkdir -p "$RAY_TEMP_DIR"
    fi
    setup_auth
    cat > "$CONF_FILE" << EOF
PORT=$PORT
DASHBOARD_PORT=$DASHBOARD_PORT
NODE_IP=$NODE_IP
WORKERS=$WORKERS
RAY_TEMP_DIR=$RAY_TEMP_DIR
TOKEN_PATH=$TOKEN_PATH
EOF
    {
        echo "# source this file to use the local cluster started from $STATE_DIR"
        echo "export RAY_ADDRESS=$NODE_IP:$PORT"
        echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT"
        echo "export RAY_AUTH_MODE=$RAY_AUTH_MODE"
        [ -n "$TOKEN_PATH" ] && echo "export RAY_AUTH_TOKEN_PATH=$TOKEN_PATH"
        echo "export SEA_DIST_CLUSTER_DIR=$STATE_DIR"
    } > "$ENV_FILE"

    unset RAY_ADDRESS
    export RAY_USAGE_STATS_ENABLED=0
    [ "$RAY_METRICS" = 1 ] || export RAY_enable_metrics_collection=0

    local head_base started
    head_base=$(port_block 0)
    started=$(date +%s)
    # shellcheck disable=SC2046
    AUTOSCALER_METRIC_PORT=$((head_base + 7)) DASHBOARD_METRIC_PORT=$((head_base + 8)) \
        start_node head --head --port "$PORT" \
            --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
            --ray-client-server-port $((head_base + 6)) $(node_args 0 "$HEAD_CPUS")

    # Workers need the GCS only; the dashboard may come a little later.
    local head_pid
    head_pid=$(awk '$1 == "head" {print $2}' "$NODES_FILE")
    while ! "$PYTHON" -c "import socket, sys; socket.create_connection(('$NODE_IP', $PORT), 1).close()" 2> /dev/null; do
        pid_alive "$head_pid" || fail_up "the head exited during start-up"
        [ $(($(date +%s) - started)) -lt "$TIMEOUT" ] || fail_up "the GCS did not open $NODE_IP:$PORT within ${TIMEOUT}s"
        sleep 0.5
    done
    for k in $(seq 1 "$WORKERS"); do
        # shellcheck disable=SC2046
        start_node "worker-$k" --address "$NODE_IP:$PORT" $(node_args "$k" "$WORKER_CPUS")
    done

    local want=$((WORKERS + 1)) alive="" name pid
    while :; do
        while read -r name pid; do
            pid_alive "$pid" || fail_up "$name exited during start-up"
        done < "$NODES_FILE"
        alive=$(alive_nodes)
        [ "$alive" = "$want" ] && break
        [ $(($(date +%s) - started)) -lt "$TIMEOUT" ] || fail_up "only ${alive:-0}/$want nodes alive after ${TIMEOUT}s"
        sleep 1
    done
    log "cluster up: $want nodes alive in $(($(date +%s) - started))s"
    log "  GCS $NODE_IP:$PORT, dashboard http://127.0.0.1:$DASHBOARD_PORT, Ray temp dir $RAY_TEMP_DIR"
    log "  source $ENV_FILE"
}

cmd_down() {
    if ! load_conf 2> /dev/null; then
        log "no cluster state in $STATE_DIR"
        return 0
    fi
    local pid name deadline targets=""
    if [ -f "$NODES_FILE" ]; then
        # Workers first, the head last. A recorded PID is signalled only while it still runs our
        # `ray start` (same temp dir); once it is gone, its process group (which Linux never
        # hands to another process while members remain) holds only our leftovers.
        for pid in $(awk '{print $2}' "$NODES_FILE" | tac); do
            if pid_is_ours "$pid"; then
                kill -TERM "$pid" 2> /dev/null || true
                targets="$targets $pid"
            elif ! pid_alive "$pid" && group_alive "$pid"; then
                targets="$targets $pid"
            fi
        done
        # Ray drains a node for up to 30 s on SIGTERM.
        deadline=$(($(date +%s) + 40))
        for pid in $targets; do
            while group_alive "$pid" && [ "$(date +%s)" -lt "$deadline" ]; do
                pid_alive "$pid" || kill -TERM -- "-$pid" 2> /dev/null || true
                sleep 0.5
            done
            if group_alive "$pid" && { pid_is_ours "$pid" || ! pid_alive "$pid"; }; then
                log "process group $pid still alive after 40 s: SIGKILL"
                kill -KILL -- "-$pid" 2> /dev/null || true
            fi
        done
        while read -r name pid; do
            log "stopped $name (pid $pid)"
        done < "$NODES_FILE"
        rm -f "$NODES_FILE"
    fi
    if [ "$PURGE" = 1 ]; then
        case "$RAY_TEMP_DIR" in /tmp/ray-lc.*) rm -rf "$RAY_TEMP_DIR" ;; esac
        rm -rf "$STATE_DIR"
        log "removed $STATE_DIR"
    fi
}

cmd_status() {
    load_conf 2> /dev/null || { echo "no cluster state in $STATE_DIR"; return 3; }
    [ -f "$NODES_FILE" ] || { echo "stopped (state in $STATE_DIR)"; return 3; }
    local total=0 running=0 name pid
    while read -r name pid; do
        total=$((total + 1))
        if pid_is_ours "$pid"; then
            running=$((running + 1))
            echo "$name pid $pid running"
        else
            echo "$name pid $pid not running"
        fi
    done < "$NODES_FILE"
    [ -n "$TOKEN_PATH" ] && export RAY_AUTH_TOKEN_PATH=$TOKEN_PATH
    echo "GCS $NODE_IP:$PORT  dashboard http://127.0.0.1:$DASHBOARD_PORT  alive nodes: $(alive_nodes)"
    echo "env: source $ENV_FILE"
    [ "$running" -eq "$total" ] && return 0
    [ "$running" -eq 0 ] && return 3
    return 1
}

cmd_listeners() {
    load_conf 2> /dev/null || die "no cluster state in $STATE_DIR"
    command -v ss > /dev/null || die "ss (iproute2) not found"
    local groups
    groups=" $(node_pids | tr '\n' ' ') "
    ps -eo pid=,pgid= | awk -v g="$groups" 'index(g, " " $2 " ") {print $1}' | sort -u > "$STATE_DIR/.pids"
    ss -ltnpH | while read -r _state _recv _send local _peer process; do
        for pid in $(echo "$process" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
            if grep -qx "$pid" "$STATE_DIR/.pids"; then
                echo "$local $process"
                break
            fi
        done
    done
    rm -f "$STATE_DIR/.pids"
}

case "$CMD" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    listeners) cmd_listeners ;;
    env-file) echo "$ENV_FILE" ;;
    help | -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command '$CMD' (up, down, status, listeners, env-file, help)" ;;
esac
