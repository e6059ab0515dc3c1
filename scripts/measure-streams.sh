#!/bin/bash
# Monitors one server process sustains: starts `ecgregen serve` (demo corpus, no LLM), then for each N replays
# N live monitors for 40 s at real time with `ecgregen simulate-monitors` and prints the simulator's summary line
# with the server's CPU use (from /proc). The load generator runs on the same machine.
# usage: scripts/measure-streams.sh RATE_HZ N [N ...]      e.g. scripts/measure-streams.sh 100 300 600 900
set -euo pipefail
E=${ECGREGEN:-.venv/bin/ecgregen}
WORK=$(mktemp -d)
trap 'kill $SPID 2>/dev/null; rm -rf "$WORK"' EXIT
$E serve --data-dir "$WORK/var" --no-llm --port 52999 --metrics-port 52998 --max-streams 4096 > "$WORK/serve.log" 2>&1 &
SPID=$!
for _ in $(seq 120); do grep -q "serving ecgregen.v1" "$WORK/serve.log" && break; sleep 1; done
RATE=$1; shift
for N in "$@"; do
  T0=$(awk '{print $14+$15}' /proc/$SPID/stat); W0=$(date +%s.%N)
  LINE=$($E simulate-monitors --records ecgregen/demo_corpus/ptbxl --monitors "$N" --speed 1.0 --duration 40 \
         --rate "$RATE" --server 127.0.0.1:52999 2>&1 | tail -1)
  T1=$(awk '{print $14+$15}' /proc/$SPID/stat); W1=$(date +%s.%N)
  CORES=$(echo "($T1-$T0)/100/($W1-$W0)" | bc -l)
  printf "rate %s Hz | %s | server %.2f cores, %.4f cores/monitor\n" "$RATE" "$LINE" "$CORES" "$(echo "$CORES/$N" | bc -l)"
done
