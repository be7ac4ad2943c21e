#!/bin/sh
# The soak's failing handler (tests/soak/soak.py): reports progress, then
# fails its first two attempts and succeeds on the third, so a task with
# max_attempts 1 or 2 ends failed (after a retry for 2) and one with 3
# ends succeeded with a result: errors, retries, progress and results all
# churn through the store.
cat >/dev/null
echo "::progress::{\"attempt\": $BGTASKS_ATTEMPT}"
if [ "$BGTASKS_ATTEMPT" -lt 3 ]; then
    echo "attempt $BGTASKS_ATTEMPT of $BGTASKS_TASK_ID failed on purpose" >&2
    exit 3
fi
echo "{\"ok\": true, \"attempt\": $BGTASKS_ATTEMPT}"
