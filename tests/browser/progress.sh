#!/bin/sh
# A handler for the browser test: reports progress over about two seconds
# (SPEC §10), then prints its result, so the page shows both.
for p in 0 25 50 75 100; do
    echo "::progress::{\"percent\": $p}"
    sleep 0.5
done
echo '{"done": true}'
