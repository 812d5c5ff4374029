#!/usr/bin/env bash
# Times the README's first command as a new user runs it: a fresh clone, a fresh HOME (no
# pulled model, no saved prefix), no pip cache. With --beside-build VENV, a second foundry
# build (from VENV, on llama.cpp) runs in a loop the whole time, as on a shared machine.
#
#   bash bench/readme_first_command.sh [--beside-build /path/to/.venv]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
beside=""
if [ "${1:-}" = "--beside-build" ]; then beside=$2; fi
work=$(mktemp -d /tmp/first-command.XXXXXX)
git clone -q "$repo" "$work/foundry"
# The first fenced bash block after "**1." in the README: the command a newcomer pastes.
command=$(awk '/^\*\*1\./{found=1} found && /^```bash/{getline; print; exit}' "$repo/README.md")
echo "command: $command"
export HOME="$work/home" PIP_NO_CACHE_DIR=1
mkdir -p "$HOME"
loop_pid=""
if [ -n "$beside" ]; then
  # In a session of its own, so the whole loop (the build running now included) is killed.
  setsid bash -c '
    n=0
    while true; do
      n=$((n + 1))
      FOUNDRY_HOME="$1/beside-home" "$2/bin/foundry" build "beside$n" \
        "Build a CLI todo app with tests" --dir "$1/beside/$n" --yes --max-turns 2 \
        --backend llamacpp >/dev/null 2>&1 || true
    done' loop "$work" "$beside" &
  loop_pid=$!
  sleep 20  # the second build loaded and working
fi
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s.%N)
set +e
(cd "$work/foundry" && bash -c "$command") >"$work/stdout.txt" 2>"$work/stderr.txt"
status=$?
set -e
end=$(date +%s.%N)
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "$loop_pid" ]; then
  kill -- "-$loop_pid" 2>/dev/null || true
  echo "beside: $(ls "$work/beside" 2>/dev/null | wc -l) builds started during the run"
fi
printf 'exit %s after %.0f s; output in %s\n' "$status" "$(echo "$end - $start" | bc)" "$work"
tail -3 "$work/stdout.txt"
# The build's own part, from its ledger row (the rest was the install and the model's pull).
python3 - "$HOME" <<'PY'
import glob, sqlite3, sys
from datetime import datetime
# include_hidden: the ledger is under ~/.local/share/foundry.
for db in glob.glob(f"{sys.argv[1]}/**/foundry.db", recursive=True, include_hidden=True):
    for name, status, started, finished in sqlite3.connect(db).execute(
        "SELECT name, status, started_at, finished_at FROM builds"
    ):
        took = datetime.fromisoformat(finished.rstrip("Z")) - datetime.fromisoformat(started.rstrip("Z"))
        print(f"build {name}: {status}, {took.total_seconds():.0f} s from its ledger row ({db})")
PY
