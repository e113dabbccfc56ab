#!/bin/sh
# Re-records tests/salt/expected-system/ref-system.txt: what Salt itself
# does when it applies tests/salt/corpus/ref-system to an isolated copy of
# this system (tests/salt/isolated.sh: overlay over /, private mount,
# network and UTS namespaces, chroot). Not run in CI (the comparison test,
# tests/e2e/salt_system.rs, reads the recorded file and applies the same
# tree with halite-agent through the same isolated.sh).
#
# Needs root, overlayfs, salt-call 3008 in a venv visible in the copy
# (its path is the same through the overlay), and cron's .deb: Salt's cron
# module runs crontab(1), which this host does not have; only that binary
# is taken from the package (dpkg -x) inside the copy.
#   apt-get download cron
#   SALT_CALL=/tmp/salt-venv/bin/salt-call CRON_DEB=$PWD/cron_*.deb tests/salt/record-system.sh
# With HALITE_AGENT=target/debug/halite-agent, halite then plans the same
# tree on what Salt left (`apply --test`, in the same copy) and the
# recording fails if halite would change anything: a host Salt kept is
# taken over as it is.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
salt_call=${SALT_CALL:-/tmp/salt-venv/bin/salt-call}
python=${PYTHON:-python3}
: "${CRON_DEB:?CRON_DEB must name cron's .deb (apt-get download cron)}"
tree=ref-system
work=$(mktemp -d)
cp "$CRON_DEB" "$work/cron.deb"
[ -z "${HALITE_AGENT:-}" ] || cp "$HALITE_AGENT" "$work/halite-agent"
cat > "$work/minion" <<CONF
id: ref
file_client: local
root_dir: /run/ref/salt
cachedir: /run/ref/salt/cache
pki_dir: /run/ref/salt/pki
sock_dir: /run/ref/salt/sock
log_file: /run/ref/salt/log
file_roots:
  base:
    - /run/ref/tree
CONF
cat > "$work/run" <<RUN
#!/bin/sh
set -eu
dpkg -x /run/ref/bin/cron.deb /tmp/cron-deb
cp /tmp/cron-deb/usr/bin/crontab /usr/bin/crontab
chgrp crontab /usr/bin/crontab
chmod 2755 /usr/bin/crontab
$salt_call --local --config-dir /run/ref/bin --out json state.apply > /run/ref/salt.json || true
if [ -x /run/ref/bin/halite-agent ]; then
  /run/ref/bin/halite-agent apply --local /run/ref/tree --id ref --config /nonexistent/agent.yaml --root / --json --test > /run/ref/bin/takeover.json || true
fi
cat /run/ref/salt.json
RUN
"$here/isolated.sh" "$here/corpus/$tree" "$work" sh /run/ref/bin/run > "$work/out"
# The facts, then one line per state: its kind, id and outcome.
awk 'facts; /^--- facts$/ { facts = 1 }' "$work/out" > "$work/facts"
sed '/^--- facts$/,$d' "$work/out" > "$work/result.json"
"$python" - "$work/result.json" >> "$work/facts" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))["local"]
if not isinstance(result, dict):
    sys.exit(f"salt-call did not return state results: {result}")
for key, ret in sorted(result.items(), key=lambda kv: kv[1]["__run_num__"]):
    module, id_, _name, function = key.split("_|-")
    outcome = "failed" if not ret["result"] else "changed" if ret["changes"] else "unchanged"
    print(f"state {module}.{function} {id_} {outcome}")
    if not ret["result"]:
        print(f"  {ret['comment']}", file=sys.stderr)
PY
if [ -n "${HALITE_AGENT:-}" ]; then
  "$python" - "$work/takeover.json" <<'PY'
import json, sys
states = json.load(open(sys.argv[1]))["agents"][0]["states"]
changing = [(s["kind"], s["id"], s["outcome"]) for s in states if s["outcome"] != "unchanged"]
if changing:
    sys.exit(f"halite would change what Salt left: {changing}")
print(f"halite takes over what Salt left: {len(states)} states unchanged", file=sys.stderr)
PY
fi
mkdir -p "$here/expected-system"
mv "$work/facts" "$here/expected-system/$tree.txt"
echo "recorded $here/expected-system/$tree.txt" >&2
rm -rf "$work"
