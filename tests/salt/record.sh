#!/bin/sh
# Re-records tests/salt/expected/TREE.txt: what Salt itself does when it
# applies each reference tree of tests/salt/corpus. Not run in CI (the
# comparison test, tests/e2e/salt_reference.rs, reads the recorded files).
#
# Needs root (a mount namespace) and salt-call 3008, e.g.:
#   python3 -m venv /tmp/salt-venv
#   /tmp/salt-venv/bin/pip install --no-deps salt==3008.*  # plus the
#   packages of its requirements/base.txt and zeromq.txt
#   SALT_CALL=/tmp/salt-venv/bin/salt-call tests/salt/record.sh
#
# Salt has no --root: the reference trees keep every path under
# /srv/halite-ref, and each run happens in a private mount namespace with a
# fresh tmpfs on /srv (unshare --mount), so nothing on this host changes.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
salt_call=${SALT_CALL:-salt-call}
python=${PYTHON:-python3}
[ -d /srv ] || { echo "record.sh: /srv must exist (a tmpfs is mounted over it in a namespace)" >&2; exit 2; }
for tree in ${TREES:-ref-language}; do
  work=$(mktemp -d)
  cat > "$work/minion" <<CONF
id: ref
file_client: local
root_dir: $work/root
cachedir: $work/cache
pki_dir: $work/pki
sock_dir: $work/sock
log_file: $work/log
log_level_logfile: info
file_roots:
  base:
    - $here/corpus/$tree
CONF
  unshare --mount --propagation private sh -c '
    set -eu
    mount -t tmpfs tmpfs /srv
    "$1" --local --config-dir "$2" --out json state.apply > "$2/result.json" || true
    "$3" "$4/summarize.py" /srv/halite-ref "$2/result.json"
  ' record "$salt_call" "$work" "$python" "$here" > "$here/expected/$tree.txt"
  echo "recorded $here/expected/$tree.txt" >&2
  rm -rf "$work"
done
