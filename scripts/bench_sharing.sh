#!/usr/bin/env bash
# Training throughput on a machine shared with other work, with OpenMP's idle threads spinning
# (libgomp's default, GOMP_SPINCOUNT=300000) and sleeping soon (the command's default, 1000).
# Usage: scripts/bench_sharing.sh DATA CACHE_DIR [REPEATS]   (prints a Markdown table)
set -euo pipefail
data=$1 cache=$2 repeats=${3:-3}
bin=${AUDIOTAG:-.venv/bin/audiotag}
rate() {  # training clips/s of one `audiotag bench training`
  env "$@" "$bin" bench training "$data" --cache-dir "$cache" -q 2>&1 | sed -n 's/.*training \([0-9]*\) clips.*/\1/p' | tail -1
}
echo "| GOMP_SPINCOUNT | alone | next to a busy loop | two runs at once (each) |"
echo "|---|---|---|---|"
for spin in 300000 1000; do
  alone="" busy="" pair=""
  for _ in $(seq "$repeats"); do
    alone+="$(rate GOMP_SPINCOUNT=$spin) "
    python3 -c "while True: pass" & loop=$!
    busy+="$(rate GOMP_SPINCOUNT=$spin) "
    kill $loop
    a=$(mktemp) b=$(mktemp)
    rate GOMP_SPINCOUNT=$spin > "$a" & rate GOMP_SPINCOUNT=$spin > "$b"; wait
    pair+="$(cat "$a")+$(cat "$b") "
    rm -f "$a" "$b"
  done
  echo "| $spin | ${alone% } | ${busy% } | ${pair% } |"
done
