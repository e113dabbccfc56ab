#!/usr/bin/env bash
# The API, dashboard and metrics, on and off (issue #17): bench/observed.sh [ROUNDS] [WHAT]
#
# With this tree's release build (run `cargo build --release --workspace`
# first), runs the drift → restore benchmark and the 1,000-agent ingest
# alternately off (no `api:`, no `metrics:`) and on (`--observed=WHAT`,
# default `all`: one SSE client following every event and /metrics scraped
# every second; `idle`, `sse`, `scrape` turn on a part), ROUNDS times
# (default 3), so both sides see the same machine. Prints, per figure, the
# median of each side, the ratio on/off of the medians, the spread of the
# per-round ratios, and `uptime` before and after: on a shared machine the
# latencies move with the neighbours, the CPU per drift and per event
# (the master's threads' schedstat) much less.
#
# Release benchmarks only: never part of the test suite. Knobs:
#   HALITE_BENCH_DRIFTS  drifts per drift run (default 1000)
#   OBSERVED_AGENTS      agents for the ingest (default 1000)
#   OBSERVED_EVENTS      events per agent (default 1000)
set -euo pipefail

case ${1:-} in -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;; esac
rounds=${1:-3} what=${2:-all}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
agents=${OBSERVED_AGENTS:-1000} events=${OBSERVED_EVENTS:-1000}
export HALITE_BENCH_DRIFTS=${HALITE_BENCH_DRIFTS:-1000}
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cd "$repo"
[ -x target/release/halite-swarm ] || { echo "build first: cargo build --release --workspace" >&2; exit 2; }
cargo bench --quiet -p halite-e2e --bench drift_restore --locked --no-run >&2
results=$(mktemp)
trap 'rm -f "$results"' EXIT

# One round of one side: prints "figure value" lines.
measure() { # flag ("" or --observed=WHAT)
  local out
  out=$(cargo bench --quiet -p halite-e2e --bench drift_restore --locked -- $1 2>/dev/null)
  awk '/drift → restored/ { for (i = 1; i <= NF; i++) if ($i == "p50") print "drift_p50_ms", $(i+1);
                           for (i = 1; i <= NF; i++) if ($i == "p99") print "drift_p99_ms", $(i+1) }
       /^cpu per drift:/ { print "drift_master_cpu_us", $5; print "drift_http_cpu_us", $9; print "drift_bench_cpu_us", $13 }' <<<"$out"
  out=$(target/release/halite-swarm ingest --agents "$agents" --events "$events" $1 2>/dev/null)
  sed -n 's/^ingest: .*: \([0-9]*\) events\/s;.*/ingest_per_s \1/p' <<<"$out"
  sed -n 's/^ingest: master CPU per event \([0-9]*\) ns.* \([0-9]*\) ns$/ingest_master_ns \1\ningest_http_ns \2/p' <<<"$out"
}

echo "before: $(uptime)"
for round in $(seq 1 "$rounds"); do
  for side in off on; do
    echo "== round $round/$rounds: $side" >&2
    flag=""; [ "$side" = on ] && flag="--observed=$what"
    measure "$flag" | sed "s/^/$round $side /" >>"$results"
  done
done
echo "after:  $(uptime)"
echo "off = no api:/metrics:, on = --observed=$what; $rounds rounds alternated; $(nproc) cores"
awk '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j+1] = a[j]; a[j+1] = t }
    return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
  }
  { value[$3, $2] = value[$3, $2] " " $4; per[$3, $1, $2] = $4; if (!($3 in figures)) order[++n] = $3; figures[$3] = 1; rounds[$1] = 1 }
  END {
    printf "%-20s %12s %12s %8s  %-13s %s\n", "figure", "off median", "on median", "on/off", "per round", "per-round values (off | on)"
    for (k = 1; k <= n; k++) {
      f = order[k]; lo = 1e18; hi = 0
      for (r in rounds) if (per[f, r, "off"] > 0) { q = per[f, r, "on"] / per[f, r, "off"]; if (q < lo) lo = q; if (q > hi) hi = q }
      a = median(value[f, "off"]); b = median(value[f, "on"])
      if (hi == 0) { lo = 0 }
      printf "%-20s %12.3f %12.3f %8.3f  %.3f–%.3f   %s |%s\n", f, a, b, (a > 0 ? b / a : 0), lo, hi, value[f, "off"], value[f, "on"]
    }
  }' "$results"
