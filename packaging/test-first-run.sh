#!/usr/bin/env bash
# The first-run walkthrough of docs/install.md, with the installed binaries,
# in a temporary directory instead of /etc, /var/lib and /srv:
# init, author a state, start the master, start an agent with the lines init
# printed, accept its key, drift a managed file, see it restored; with
# HALITE_AGENT_RSS_MAX_KIB set, the idle agent's RSS is checked against it.
#
#   packaging/test-first-run.sh BINDIR     (BINDIR holds halite-master and halite-agent)
#
# Exit 0 when the file came back byte for byte; otherwise the logs are shown.
set -euo pipefail
bindir=$(cd "${1:?usage: $0 BINDIR}" && pwd)
master_bin="$bindir/halite-master"
agent_bin="$bindir/halite-agent"
work=$(mktemp -d)
pids=()

cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$status" -ne 0 ]; then
        for log in "$work"/*.out "$work"/*.log; do
            [ -f "$log" ] && { echo "---- $log"; tail -n 40 "$log"; }
        done
    fi
    rm -rf "$work"
}
trap cleanup EXIT

step() { echo "== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# Waits (up to 60 s) until the command succeeds; a condition, not a delay.
await() {
    local what=$1; shift
    local deadline=$((SECONDS + 60))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for: $what"
        sleep 0.1
    done
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
        || shuf -i 20000-60000 -n 1
}

step "halite-master init"
port=$(free_port)
"$master_bin" init --dir "$work/master" --listen "tcp://127.0.0.1:$port" | tee "$work/init.out"
grep -q '^    master_key: "[0-9a-f]\{64\}"$' "$work/init.out" || fail "init printed no master_key line"
[ "$(stat -c %a "$work/master/data/master.key")" = 600 ] || fail "the master key is not owner-only"

step "author a state (edit the example's motd)"
expected="Managed by halite; first-run test $$."
sed -i "s/This host is managed by halite. Local edits are restored./$expected/" "$work/master/states/motd.yaml"
grep -q "$expected" "$work/master/states/motd.yaml" || fail "the example tree's motd state changed shape"
"$master_bin" check --states "$work/master/states"

step "start the master"
"$master_bin" run --config "$work/master/master.yaml" >"$work/master.out" 2>"$work/master.log" &
pids+=($!)
await "the master's ready line" grep -q '^ready ' "$work/master.out"
grep -q "listen=tcp://127.0.0.1:$port " "$work/master.out" || fail "the master does not listen where init said"

step "start an agent with the lines init printed"
mkdir -p "$work/agent/root"
{
    echo "id: web01"
    echo "data_dir: $work/agent/data"
    echo "root: $work/agent/root   # managed paths land here, not in the real /etc"
    sed -n 's/^    \(master\(_key\)\?: .*\)$/\1/p' "$work/init.out"
} >"$work/agent.yaml"
cat "$work/agent.yaml"
"$agent_bin" run --config "$work/agent.yaml" >"$work/agent.out" 2>"$work/agent.log" &
agent_pid=$!
pids+=("$agent_pid")
await "the agent's ready line" grep -q '^ready id=web01$' "$work/agent.out"

step "the key is pending; compare fingerprints, accept"
keys() { "$master_bin" keys --config "$work/master/master.yaml" "$@"; }
await "web01 pending" sh -c "'$master_bin' keys --config '$work/master/master.yaml' list | grep -q '^web01 *pending'"
keys list
agent_key=$("$agent_bin" fingerprint --data-dir "$work/agent/data")
keys list | grep -q "^web01 *pending *$agent_key$" || fail "the listed key is not the agent's fingerprint"
[ ! -e "$work/agent/root/etc/motd" ] || fail "a pending agent was given states"
keys accept web01

motd="$work/agent/root/etc/motd"
step "the agent converges: $motd"
await "motd written" grep -qx "$expected" "$motd"
await "nginx.conf written" cmp -s "$work/master/states/files/nginx.conf" "$work/agent/root/etc/nginx/nginx.conf"
cp "$motd" "$work/motd.expected"

step "drift: edit the managed file by hand"
echo "edited by hand" >"$motd"
await "motd restored" cmp -s "$work/motd.expected" "$motd"
echo "restored byte for byte:"
cat "$motd"

# The budget of an idle agent's memory (README, Installing on servers:
# 8 MiB) when HALITE_AGENT_RSS_MAX_KIB is set, as check-debs.sh sets it for
# the packaged agent: a budget, read once the agent has converged, restored
# and has nothing left to do, not a timing.
if [ -n "${HALITE_AGENT_RSS_MAX_KIB:-}" ]; then
    step "the idle agent's memory"
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$agent_pid/status")
    echo "agent VmRSS ${rss} KiB (budget ${HALITE_AGENT_RSS_MAX_KIB} KiB)"
    grep -E '^(VmHWM|RssAnon|RssFile):' "/proc/$agent_pid/status"
    [ "$rss" -le "$HALITE_AGENT_RSS_MAX_KIB" ] || fail "the idle agent holds ${rss} KiB, over its ${HALITE_AGENT_RSS_MAX_KIB} KiB"
fi

step "stop both cleanly (SIGTERM)"
for pid in "${pids[@]}"; do kill -TERM "$pid"; done
for pid in "${pids[@]}"; do wait "$pid" || fail "process $pid did not stop cleanly"; done
pids=()
echo "first run: ok"
