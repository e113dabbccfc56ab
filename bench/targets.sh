#!/usr/bin/env bash
# Issue #21's targets, two commits side by side: bench/targets.sh BASE HEAD [ROUNDS]
#
# Builds both commits like bench/compare.sh (release, each in its own
# worktree under $COMPARE_DIR, default target/compare, plus the agent's
# `release-agent` build, the one its package ships), then measures every
# target of issue #21, figure by figure, BASE then HEAD, ROUNDS times
# (default 1): drift → restore on ext4 ($TMPDIR, default /tmp), on tmpfs
# (/dev/shm) and beside a CPU burner (`--load`, on both), 1,000 drifts each; the
# 10,000-agent drift storm and reconnect; ingest from 1,000 agents × 1,000
# events and from one agent × 1,000,000; the idle agent (10 beacons, 100
# files, the `release-agent` binary) and master over 60 s: RSS and share
# of a core from schedstat. Prints one line per figure and side (the
# median over the rounds) with the target beside it. Every run's output
# is kept in $COMPARE_DIR/targets-logs.
#
# Release benchmarks only, on a quiet machine: about 15 minutes a round.
# Knobs: HALITE_BENCH_DRIFTS (default 1000), TARGETS_WINDOW (footprint,
# default 60s), TARGETS_ONLY (a space-separated subset of the figures'
# groups: drift storm reconnect ingest footprint).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
base=$1 head=$2 rounds=${3:-1}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
scratch=${COMPARE_DIR:-$repo/target/compare}
export HALITE_BENCH_DRIFTS=${HALITE_BENCH_DRIFTS:-1000}
window=${TARGETS_WINDOW:-60s}
only=${TARGETS_ONLY:-drift storm reconnect ingest footprint}
logs=$scratch/targets-logs
mkdir -p "$scratch" "$logs"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
unset CARGO_TARGET_DIR
AGENT_PROFILE=1 build A "$base"
AGENT_PROFILE=1 build B "$head"
results=$scratch/targets.txt
: >"$results"

# run SIDE ROUND WHAT COMMAND…: runs COMMAND in SIDE's tree, its output
# kept as $logs/ROUND-SIDE-WHAT.{out,err}. A failed run is run once more
# (its log kept as …-failed.err and named on stderr: a failure is a
# finding, e.g. a commit's known bug); a second failure stops everything.
run() {
  local side=$1 round=$2 what=$3 code=0
  shift 3
  local log=$logs/$round-$side-$what
  (cd "$scratch/$side" && "$@") >"$log.out" 2>"$log.err" || code=$?
  if [ "$code" -ne 0 ]; then
    mv "$log.err" "$log-failed.err"
    echo "round $round side $side: $what failed (exit $code; see $log-failed.err), running it again" >&2
    code=0
    (cd "$scratch/$side" && "$@") >"$log.out" 2>"$log.err" || code=$?
  fi
  if [ "$code" -ne 0 ]; then
    echo "round $round side $side: $what failed again (exit $code); see $log.err" >&2
    exit 1
  fi
  echo "$log.out"
}
note() { echo "$1 $2 $3" >>"$results"; } # side figure value
drift() { # side round what [env] [flag]
  local side=$1 round=$2 what=$3 out
  out=$(run "$side" "$round" "drift-$what" env ${4:+"$4"} cargo bench --quiet -p halite-e2e --bench drift_restore --locked -- ${5:-})
  read -r min p50 p99 max < <(awk '/drift → restored/ { for (i = 1; i <= NF; i++) if ($i ~ /^(min|p50|p99|max)$/) printf "%s ", $(i+1); print "" }' "$out")
  note "$side" "drift_${what}_min_ms" "$min"; note "$side" "drift_${what}_p50_ms" "$p50"
  note "$side" "drift_${what}_p99_ms" "$p99"; note "$side" "drift_${what}_max_ms" "$max"
}
swarm() { echo "target/release/halite-swarm"; }

for round in $(seq 1 "$rounds"); do
  for group in $only; do
    for side in A B; do
      echo "== round $round/$rounds: $group, $side" >&2
      case $group in
        drift)
          drift "$side" "$round" ext4 "TMPDIR=${TMPDIR:-/tmp}"
          drift "$side" "$round" tmpfs TMPDIR=/dev/shm
          drift "$side" "$round" load "TMPDIR=${TMPDIR:-/tmp}" --load
          drift "$side" "$round" load-tmpfs TMPDIR=/dev/shm --load
          ;;
        storm)
          out=$(run "$side" "$round" storm "$(swarm)" --timeout 300s storm --agents 10000)
          note "$side" storm_10k_s "$(sed -n 's/^storm: all [0-9]* restored \([0-9.]*\) s after.*/\1/p' "$out")"
          ;;
        reconnect)
          out=$(run "$side" "$round" reconnect "$(swarm)" --timeout 300s reconnect --agents 10000)
          note "$side" reconnect_10k_s "$(sed -n 's/^reconnect: [0-9]* agents back and converged \([0-9.]*\) s after.*/\1/p' "$out")"
          ;;
        ingest)
          out=$(run "$side" "$round" ingest-1000 "$(swarm)" ingest --agents 1000 --events 1000)
          note "$side" ingest_1000_agents_per_s "$(sed -n 's/^ingest: .*: \([0-9]*\) events\/s;.*/\1/p' "$out")"
          out=$(run "$side" "$round" ingest-1 "$(swarm)" ingest --agents 1 --events 1000000)
          note "$side" ingest_1_agent_per_s "$(sed -n 's/^ingest: .*: \([0-9]*\) events\/s;.*/\1/p' "$out")"
          ;;
        footprint)
          # The swarm starts the binaries beside it: the release master and
          # swarm, and the agent as its package ships it.
          kit=$scratch/$side-kit
          rm -rf "$kit" && mkdir -p "$kit"
          cp "$scratch/$side"/target/release/{halite-swarm,halite-master} "$kit/"
          cp "$scratch/$side/target/release-agent/halite-agent" "$kit/"
          out=$(run "$side" "$round" footprint "$kit/halite-swarm" footprint --window "$window")
          note "$side" idle_agent_rss_mib "$(sed -n 's/^footprint: agent .* RSS \([0-9.]*\) MiB.*/\1/p' "$out")"
          note "$side" idle_agent_cpu_pct "$(sed -n 's/^footprint: agent .*CPU \([0-9.]*\)% of a core.*/\1/p' "$out")"
          note "$side" idle_master_cpu_pct "$(sed -n 's/^footprint: master .*CPU \([0-9.]*\)% of a core.*/\1/p' "$out")"
          note "$side" idle_master_rss_mib "$(sed -n 's/^footprint: master .* RSS \([0-9.]*\) MiB.*/\1/p' "$out")"
          ;;
      esac
    done
  done
done

target() {
  case $1 in
    drift_ext4_p50_ms) echo "≤ 1.0" ;; drift_ext4_p99_ms) echo "≤ 3" ;;
    drift_tmpfs_p50_ms) echo "≤ 0.6" ;; drift_load_p99_ms | drift_load-tmpfs_p99_ms) echo "≤ 5" ;;
    storm_10k_s) echo "≤ 1.5" ;; reconnect_10k_s) echo "≤ 4" ;;
    ingest_1000_agents_per_s) echo "≥ 1000000" ;; ingest_1_agent_per_s) echo "≥ 600000" ;;
    idle_agent_rss_mib) echo "≤ 8" ;; idle_agent_cpu_pct) echo "≤ 0.02" ;; idle_master_cpu_pct) echo "≤ 0.05" ;;
    *) echo "" ;;
  esac
}
echo "A = $base ($(git -C "$scratch/A" rev-parse --short HEAD)), B = $head ($(git -C "$scratch/B" rev-parse --short HEAD)), $rounds round(s), A then B per figure; $(nproc) cores; $(uptime | sed 's/.*load/load/')"
printf '%-26s %14s %14s %8s  %s\n' figure "A" "B" "B/A" target
for figure in $(awk '{ print $2 }' "$results" | awk '!seen[$0]++'); do
  # shellcheck disable=SC2046
  a=$(median $(awk -v f="$figure" '$1 == "A" && $2 == f { print $3 }' "$results"))
  # shellcheck disable=SC2046
  b=$(median $(awk -v f="$figure" '$1 == "B" && $2 == f { print $3 }' "$results"))
  printf '%-26s %14s %14s %8s  %s\n' "$figure" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0) printf "%.3f", b / a }')" "$(target "$figure")"
done
