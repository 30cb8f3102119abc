#!/bin/sh
# An `--exec` handler for `coordinator worker` / `coordinator member`:
#
#   coordinator member --backend consul --instance-id m1 --exec sh exec-handler.sh
#
# coordinator runs it once per settled change, one at a time and in order,
# with the change's JSON line (the one printed on stdout) on stdin and the
# change in the environment:
#
#   COORDINATOR_INSTANCE_ID   this member
#   COORDINATOR_REVISION      the store revision of the change
#   COORDINATOR_INITIAL       true for the first settled workload
#   COORDINATOR_WORKLOAD      every work id held now, one per line, sorted
#   COORDINATOR_ADDED         work ids added, one per line, sorted
#   COORDINATOR_REMOVED       work ids removed, one per line, sorted
#   COORDINATOR_CHANGED       work ids whose value changed, one per line, sorted
#
# Exit 0 when the change is handled. Any other status is logged by coordinator
# (with the status) and the next change is handled as usual.
#
# This one "starts" each added item and "stops" each removed one, and refuses
# items whose id begins with `fail`. With HANDLER_LOG set it appends one line
# per change to that file (the tests read it).
set -eu

json=$(cat)

record() {
    if [ -n "${HANDLER_LOG:-}" ]; then
        printf '%s\n' "$1" >>"$HANDLER_LOG"
    fi
}

commas() { printf '%s' "$1" | tr '\n' ','; }

record "revision=$COORDINATOR_REVISION initial=$COORDINATOR_INITIAL added=$(commas "$COORDINATOR_ADDED") removed=$(commas "$COORDINATOR_REMOVED") workload=$(commas "$COORDINATOR_WORKLOAD") json=$json"

while IFS= read -r id; do
    [ -n "$id" ] || continue
    echo "$COORDINATOR_INSTANCE_ID: stopping $id"
done <<END
$COORDINATOR_REMOVED
END

while IFS= read -r id; do
    [ -n "$id" ] || continue
    case $id in
    fail*)
        echo "$COORDINATOR_INSTANCE_ID: cannot start $id" >&2
        exit 3
        ;;
    esac
    echo "$COORDINATOR_INSTANCE_ID: starting $id"
done <<END
$COORDINATOR_ADDED
END
