#!/usr/bin/env bash
# Compare the hot path of two commits: bench/compare.sh BASE HEAD [ROUNDS]
#
# Builds both commits (release, each in its own worktree and target dir under
# $COMPARE_DIR, default target/compare), then runs the drift → restore
# benchmark, the 1,000-agent drift storm and the 1,000-agent ingest
# alternately, A B A B …, ROUNDS times (default 3), so both see the same
# machine. Prints, per figure, the median of each side, the ratio HEAD/BASE
# of the medians and the spread of the per-round ratios. Lower is better for
# times, higher for rates; the last column says which way is better.
#
# Release benchmarks only: never part of the test suite. Knobs:
#   HALITE_BENCH_DRIFTS  drifts per drift run (default 300)
#   COMPARE_AGENTS       agents for storm and ingest (default 1000)
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
base=$1 head=$2 rounds=${3:-3}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
scratch=${COMPARE_DIR:-$repo/target/compare}
agents=${COMPARE_AGENTS:-1000}
export HALITE_BENCH_DRIFTS=${HALITE_BENCH_DRIFTS:-300}
mkdir -p "$scratch"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"

# One round of one side: prints "figure value" lines. Each run's output is
# kept in $scratch/logs; a run that fails names its log and stops the
# comparison (a benchmark that fails is a finding, not noise).
measure() { # name round
  local side=$1 round=$2
  local tree=$scratch/$side log=$scratch/logs/$round-$side
  run() { # what command…
    local what=$1 code=0
    shift
    "$@" >"$log-$what.out" 2>"$log-$what.err" || code=$?
    if [ "$code" -ne 0 ]; then
      echo "round $round side $side: $what failed (exit $code); see $log-$what.err" >&2
      exit 1
    fi
  }
  run drift bash -c "cd '$tree' && cargo bench --quiet -p halite-e2e --bench drift_restore --locked"
  awk '/drift → restored/ { for (i = 1; i <= NF; i++) if ($i == "p50") print "drift_p50_ms", $(i+1);
                           for (i = 1; i <= NF; i++) if ($i == "p99") print "drift_p99_ms", $(i+1) }' "$log-drift.out"
  run storm "$tree/target/release/halite-swarm" storm --agents "$agents"
  sed -n 's/^storm: all [0-9]* restored \([0-9.]*\) s after.*/storm_s \1/p' "$log-storm.out"
  run ingest "$tree/target/release/halite-swarm" ingest --agents "$agents" --events 1000
  sed -n 's/^ingest: .*: \([0-9]*\) events\/s;.*/ingest_per_s \1/p' "$log-ingest.out"
}

unset CARGO_TARGET_DIR
build A "$base"
build B "$head"
results=$scratch/results.txt
: >"$results"
mkdir -p "$scratch/logs"
for round in $(seq 1 "$rounds"); do
  for side in A B; do
    echo "== round $round/$rounds: $side" >&2
    measure "$side" "$round" | sed "s/^/$round $side /" >>"$results"
  done
done

echo "A = $base, B = $head, $rounds rounds, A B alternating; $(nproc) cores"
awk '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j+1] = a[j]; a[j+1] = t }
    return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
  }
  { value[$3, $2] = value[$3, $2] " " $4; per[$3, $1, $2] = $4; figures[$3] = 1; rounds[$1] = 1 }
  END {
    printf "%-14s %12s %12s %8s  %-17s %s\n", "figure", "A median", "B median", "B/A", "per-round B/A", "better"
    for (f in figures) {
      lo = 1e18; hi = 0
      for (r in rounds) if (per[f, r, "A"] > 0) { q = per[f, r, "B"] / per[f, r, "A"]; if (q < lo) lo = q; if (q > hi) hi = q }
      a = median(value[f, "A"]); b = median(value[f, "B"])
      printf "%-14s %12.3f %12.3f %8.3f  %.3f–%.3f       %s\n", f, a, b, (a > 0 ? b / a : 0), lo, hi, (f ~ /per_s/ ? "higher" : "lower")
    }
  }' "$results"
