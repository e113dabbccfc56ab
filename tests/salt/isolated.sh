#!/bin/sh
# Applies a reference tree to an isolated copy of this system and prints
# what it did there, one fact a line (see facts.sh). Used by
# record-system.sh with salt-call (the recording) and by
# tests/e2e/salt_system.rs with halite-agent (the comparison), so both run
# in the same kind of copy, seeded the same way.
#
# Usage (root; needs overlayfs and unshare):
#   isolated.sh TREE BINDIR COMMAND...
# TREE is bound at /run/ref/tree and BINDIR at /run/ref/bin inside the
# copy; COMMAND runs there, in /run/ref, after TREE/seed.sh. stdout is
# COMMAND's standard output, a line `--- facts`, then TREE/facts.sh's
# output; the seed's output and COMMAND's standard error go to stderr.
#
# The copy: private mount, network and UTS namespaces; an overlay whose
# lower layer is / and whose upper layer is a tmpfs (every write lands in
# memory and is gone when the namespace ends), with fresh /proc and /sys
# (the network namespace's own net.* sysctls) and the host's /dev; the
# command runs chrooted into it. Nothing of this host's /etc, users,
# packages or kernel settings outside the namespace changes.
set -eu
[ $# -ge 3 ] || { echo "usage: isolated.sh TREE BINDIR COMMAND..." >&2; exit 2; }
tree=$(cd "$1" && pwd)
bindir=$(cd "$2" && pwd)
shift 2
base=$(mktemp -d)
# Empty again when the namespace is gone (its tmpfs goes with it).
trap 'rmdir "$base"' EXIT
unshare --mount --net --uts --propagation private sh -c '
  set -eu
  base=$1 tree=$2 bindir=$3
  shift 3
  # The upper layer must not be an overlay itself (CI containers run on one).
  mount -t tmpfs -o mode=0755 tmpfs "$base"
  mkdir "$base/upper" "$base/work" "$base/root"
  mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
  root=$base/root
  mount -t proc proc "$root/proc"
  mount -t sysfs sysfs "$root/sys"
  mount --rbind /dev "$root/dev"
  mkdir -p "$root/run/ref/tree" "$root/run/ref/bin"
  mount --bind "$tree" "$root/run/ref/tree"
  mount --bind "$bindir" "$root/run/ref/bin"
  hostname ref
  chroot "$root" /bin/sh -c "cd /run/ref && sh tree/seed.sh" >&2
  chroot "$root" /bin/sh -c "cd /run/ref && exec \"\$@\"" command "$@" || echo "isolated.sh: the command exited $?" >&2
  echo "--- facts"
  chroot "$root" /bin/sh /run/ref/tree/facts.sh
' isolated "$base" "$tree" "$bindir" "$@"
