# Shared by bench/compare.sh and bench/targets.sh (sourced, not run).
#
# build NAME REV: checks REV out in its own worktree $scratch/NAME (made on
# first use) and builds it there: release, the drift benchmark, and with
# AGENT_PROFILE=1 also the agent as its package ships it (`release-agent`).
# Needs $repo and $scratch.
build() {
  local tree=$scratch/$1
  local commit
  commit=$(git -C "$repo" rev-parse --verify "$2^{commit}")
  if [ ! -d "$tree" ]; then
    git -C "$repo" worktree add --detach "$tree" "$commit" >/dev/null
  else
    git -C "$tree" checkout --quiet --detach "$commit"
  fi
  echo "== building $1 = $2 ($commit)" >&2
  (cd "$tree" && cargo build --quiet --release --workspace --locked \
    && cargo bench --quiet -p halite-e2e --bench drift_restore --locked --no-run) >&2
  if [ "${AGENT_PROFILE:-0}" = 1 ]; then
    (cd "$tree" && cargo build --quiet --profile release-agent -p halite-agent --locked) >&2
  fi
}

# The median of its arguments.
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
