#!/bin/bash
# Instructions per message of the bus core (memory backend, raw publish + raw subscriber, 100 keys), counted by
# callgrind: repeatable whatever else the machine does. Prints (instructions(25k) - instructions(5k)) / 20k.
# Usage: bash bench/callgrind_core.sh [python]   (needs valgrind; ~1 minute)
set -euo pipefail
PY=${1:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
# measure the trio_eventbus of this checkout, not whichever one the interpreter has installed (editable installs
# point at one tree; core_load.py's own directory, bench/, is what lands on sys.path otherwise)
export PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}"
count() {
    local out
    out=$(mktemp)
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$PY" "$HERE/core_load.py" "$1" 2>"$out" >/dev/null
    awk '/Collected/ {print $4}' "$out"
    rm -f "$out"
}
small=$(count 5000)
large=$(count 25000)
echo "instructions per message: $(( (large - small) / 20000 ))"
