#!/bin/sh
# Nightly launcher, run by the CronJob in k8s/cronjob.yaml (any image with kubectl and a POSIX
# shell). Steps:
#   1. refuse to start while another sea-dist RayJob is still active (GPUs are not shared);
#   2. render the RayJob template: every occurrence of the template's run id becomes
#      <RUN_PREFIX>-<UTC timestamp> (RayJob name, label, output dir, Ray Train run name);
#   3. kubectl create it;
#   4. wait on .status.jobStatus: exit 0 on SUCCEEDED; exit 1 on FAILED or STOPPED, or when the
#      RayJob's deployment fails (e.g. its activeDeadlineSeconds ran out);
#   5. delete finished nightly RayJobs beyond the newest KEEP_RAYJOBS (their Ray clusters are
#      gone already; this only trims the RayJob objects).
# It needs only these verbs on rayjobs.ray.io in its namespace: create, get, list, watch, delete.
set -eu

TEMPLATE=${RAYJOB_TEMPLATE:-/etc/sea-dist/rayjob.yaml}
TEMPLATE_RUN_ID=${TEMPLATE_RUN_ID:-sea-dist-manual}
RUN_PREFIX=${RUN_PREFIX:-sea-dist-nightly}
POLL_SECONDS=${POLL_SECONDS:-30}
KEEP_RAYJOBS=${KEEP_RAYJOBS:-14}
MAX_API_ERRORS=${MAX_API_ERRORS:-10}
ACTIVE_SELECTOR=${ACTIVE_SELECTOR:-app.kubernetes.io/part-of=sea-dist}
STAMP=${RUN_STAMP:-$(date -u +%Y%m%d-%H%M%S)}
RUN_ID="$RUN_PREFIX-$STAMP"
ROWS='{range .items[*]}{.metadata.name}{" "}{.status.jobDeploymentStatus}{"\n"}{end}'

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $*"; }
die() { log "error: $*" >&2; exit 1; }

k() {
    if [ -n "${NAMESPACE:-}" ]; then
        kubectl --namespace "$NAMESPACE" "$@"
    else
        kubectl "$@"
    fi
}

[ -r "$TEMPLATE" ] || die "RayJob template $TEMPLATE is not readable"
grep -q -- "$TEMPLATE_RUN_ID" "$TEMPLATE" || die "template has no run id token '$TEMPLATE_RUN_ID'"
case "$RUN_ID" in
    *[!a-z0-9-]* | -* | *-) die "run id '$RUN_ID' is not a valid Kubernetes name" ;;
esac
# KubeRay derives the RayCluster, Service and submitter Job names from it.
[ "${#RUN_ID}" -le 47 ] || die "run id '$RUN_ID' is longer than 47 characters"

# 1. One sea-dist run at a time.
rows=$(k get rayjobs -l "$ACTIVE_SELECTOR" -o jsonpath="$ROWS") || die "cannot list RayJobs"
active=""
while read -r name deployment; do
    [ -n "$name" ] || continue
    case "$deployment" in
        Complete | Failed | Suspended) ;;
        *) active="$active $name(${deployment:-New})" ;;
    esac
done <<ROWS_END
$rows
ROWS_END
[ -z "$active" ] || die "another sea-dist RayJob is still active:$active; not starting $RUN_ID"

# 2 + 3. Render and create.
log "creating RayJob $RUN_ID from $TEMPLATE"
sed "s/$TEMPLATE_RUN_ID/$RUN_ID/g" "$TEMPLATE" | k create -f -

# 4. Wait. `kubectl wait` returns as soon as the job succeeds; between waits the status is read,
# so a failure ends the loop within POLL_SECONDS instead of at a long wait's timeout.
errors=0
while :; do
    if status=$(k get rayjob "$RUN_ID" -o jsonpath='{.status.jobStatus}/{.status.jobDeploymentStatus}'); then
        errors=0
    else
        errors=$((errors + 1))
        [ "$errors" -lt "$MAX_API_ERRORS" ] || die "cannot read RayJob $RUN_ID ($errors errors in a row)"
        sleep "$POLL_SECONDS"
        continue
    fi
    job_status=${status%%/*}
    deployment=${status#*/}
    case "$job_status" in
        SUCCEEDED) result=0; break ;;
        FAILED | STOPPED) result=1; break ;;
    esac
    case "$deployment" in
        Failed | Complete) result=1; break ;;
    esac
    started=$(date +%s)
    if ! k wait --for=jsonpath='{.status.jobStatus}'=SUCCEEDED "rayjob/$RUN_ID" \
        --timeout="${POLL_SECONDS}s" > /dev/null 2>&1; then
        # A wait that fails at once (e.g. the field does not exist yet) must not spin.
        rest=$((POLL_SECONDS - ($(date +%s) - started)))
        [ "$rest" -le 0 ] || sleep "$rest"
    fi
done

if [ "$result" -eq 0 ]; then
    log "RayJob $RUN_ID succeeded"
else
    log "RayJob $RUN_ID ended with jobStatus=${job_status:-none} jobDeploymentStatus=${deployment:-none}" >&2
    k get rayjob "$RUN_ID" -o jsonpath='{.status.reason}{": "}{.status.message}{"\n"}' >&2 || true
    log "driver log: kubectl logs job/$RUN_ID (the submitter Job has the RayJob's name)" >&2
fi

# 5. Trim old nightly RayJobs: finished ones only, never this run; this run counts as one kept.
if [ "$KEEP_RAYJOBS" -gt 0 ]; then
    if rows=$(k get rayjobs --sort-by=.metadata.creationTimestamp -o jsonpath="$ROWS"); then
        finished=""
        while read -r name deployment; do
            case "$name" in "$RUN_PREFIX"-*) ;; *) continue ;; esac
            [ "$name" != "$RUN_ID" ] || continue
            case "$deployment" in Complete | Failed) finished="$finished $name" ;; esac
        done <<ROWS_END
$rows
ROWS_END
        # Word splitting wanted: RayJob names are [a-z0-9-] only.
        # shellcheck disable=SC2086
        set -- $finished
        excess=$(($# - KEEP_RAYJOBS + 1))
        while [ "$excess" -gt 0 ] && [ "$#" -gt 0 ]; do
            log "deleting old RayJob $1"
            k delete rayjob "$1" --wait=false > /dev/null || log "warning: could not delete RayJob $1" >&2
            excess=$((excess - 1))
            shift
        done
    else
        log "warning: could not list RayJobs for clean-up" >&2
    fi
fi

exit "$result"
