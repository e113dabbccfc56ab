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
# A tree whose states fetch URLs (ref-urls) needs its files served:
# SERVE=127.0.0.19:8019 starts `python3 -m http.server` there on the
# tree's served/ directory for the run, and OUT=expected-master writes the
# recording where the master-based comparison reads it
# (tests/e2e/url_sources.rs): `apply --local` cannot fetch.
#   SERVE=127.0.0.19:8019 OUT=expected-master TREES=ref-urls tests/salt/record.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$here/${OUT:-expected}
salt_call=${SALT_CALL:-salt-call}
python=${PYTHON:-python3}
[ -d /srv ] || { echo "record.sh: /srv must exist (a tmpfs is mounted over it in a namespace)" >&2; exit 2; }
for tree in ${TREES:-ref-language}; do
  work=$(mktemp -d)
  server=
  if [ -n "${SERVE:-}" ]; then
    "$python" -m http.server --bind "${SERVE%:*}" --directory "$here/corpus/$tree/served" "${SERVE##*:}" 2>/dev/null &
    server=$!
    # Ready when it answers (a 404 for / is an answer).
    until "$python" -c "import urllib.request,sys
try: urllib.request.urlopen('http://$SERVE/')
except urllib.error.HTTPError: pass" 2>/dev/null; do :; done
  fi
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
  ' record "$salt_call" "$work" "$python" "$here" > "$out/$tree.txt"
  echo "recorded $out/$tree.txt" >&2
  [ -z "$server" ] || kill "$server"
  rm -rf "$work"
done
