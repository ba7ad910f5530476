#!/bin/bash
# Before/after benchmark pairs, run alternately on the same machine: one JSON line per run, tagged.
# Usage: bash bench/compare.sh REV BACKEND ROUNDS [bench args...]   e.g.  bash bench/compare.sh bc2020f memory 3
# REV is checked out in a temporary worktree. Revisions before the bench/ move (session 3) are run with
# `python -m trio_eventbus bench`, later ones with `python -m bench`. Needs the dev venv (.venv) of this checkout.
set -euo pipefail
REV=$1 BACKEND=$2 ROUNDS=$3
shift 3
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$HERE/.venv/bin/python}
OLD=$(mktemp -d)
trap 'git -C "$HERE" worktree remove --force "$OLD"' EXIT
git -C "$HERE" worktree add -q --detach "$OLD" "$REV"
run() {  # tree, tag, then the bench arguments
    local tree=$1 tag=$2 cmd=(-m bench)
    shift 2
    [ -d "$tree/bench" ] || cmd=(-m trio_eventbus bench)
    (cd "$tree" && echo "$tag $(PYTHONPATH="$tree" timeout 1800 "$PY" "${cmd[@]}" --backend "$BACKEND" --json "$@" 2>/dev/null | tail -1)")
}
for _ in $(seq 1 "$ROUNDS"); do
    run "$OLD" before "$@"
    run "$HERE" after "$@"
done
