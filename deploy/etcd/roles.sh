#!/usr/bin/env bash
# Creates (or completes) the etcd roles of coordinator, with exactly the key ranges each needs:
#
#   coordinator-member  a full member (`coordinator member`): its member key, the election, the
#                       assignments, moves in flight, drain requests, the sequence key; read on
#                       the work items.
#   coordinator-worker  a read-only worker (`coordinator worker`): read on the assignments and
#                       on the election.
#
# Leases (a member's session) need no permission in etcd 3.4; revoking one (the leader ending a
# member that never acknowledges a move) needs write on every key bound to it, which the member
# role has (member keys and election keys).
#
# Usage (as etcd's root user; etcdctl reads its own variables):
#   ETCDCTL_ENDPOINTS=https://etcd-1:2379 ETCDCTL_USER=root:PASSWORD deploy/etcd/roles.sh
#   etcdctl user add m1 && etcdctl user grant-role m1 coordinator-member
#
# Environment:
#   COORDINATOR_KEY_ROOT  the layout's root (default service/coordinator/); the defaults of
#                         prefix, leader, members_prefix, work_prefix, handoff_prefix,
#                         drain_prefix and sequence_key all sit under it.
#   ETCDCTL               the etcdctl binary (default: etcdctl on PATH).
# Idempotent: an existing role is kept and granted what is missing.
set -euo pipefail

ROOT="${COORDINATOR_KEY_ROOT:-service/coordinator/}"
case "$ROOT" in
*/) ;;
*) ROOT="$ROOT/" ;;
esac
ETCDCTL="${ETCDCTL:-etcdctl}"
export ETCDCTL_API=3

ctl() { "$ETCDCTL" "$@" >/dev/null; }

ensure_role() {
    if ! "$ETCDCTL" role get "$1" >/dev/null 2>&1; then
        ctl role add "$1"
    fi
}

# grant ROLE PERMISSION KEY [--prefix]
grant() {
    ctl role grant-permission "$1" "$2" "$3" ${4:+"$4"}
}

ensure_role coordinator-member
grant coordinator-member readwrite "${ROOT}members/" --prefix
# The election NAME keeps its candidates' keys under NAME/ (leader = service/coordinator/leader).
grant coordinator-member readwrite "${ROOT}leader/" --prefix
grant coordinator-member read "${ROOT}work/" --prefix
grant coordinator-member readwrite "${ROOT}assignments/" --prefix
grant coordinator-member readwrite "${ROOT}handoff/" --prefix
grant coordinator-member readwrite "${ROOT}drain/" --prefix
grant coordinator-member readwrite "${ROOT}sequence"

ensure_role coordinator-worker
grant coordinator-worker read "${ROOT}assignments/" --prefix
grant coordinator-worker read "${ROOT}leader/" --prefix

echo "roles coordinator-member and coordinator-worker are ready (keys under ${ROOT})"
