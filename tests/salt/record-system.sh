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
set -eu
here=$(cd "$(dirname "$0")" && pwd)
salt_call=${SALT_CALL:-/tmp/salt-venv/bin/salt-call}
python=${PYTHON:-python3}
: "${CRON_DEB:?CRON_DEB must name cron's .deb (apt-get download cron)}"
tree=ref-system
work=$(mktemp -d)
cp "$CRON_DEB" "$work/cron.deb"
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
exec $salt_call --local --config-dir /run/ref/bin --out json state.apply
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
mkdir -p "$here/expected-system"
mv "$work/facts" "$here/expected-system/$tree.txt"
echo "recorded $here/expected-system/$tree.txt" >&2
rm -rf "$work"
