# What a run of system.sls left in the isolated copy, one fact a line
# (printed by tests/salt/isolated.sh after the run; the recording in
# tests/salt/expected-system/ref-system.txt is this output from Salt's
# run). Only what the states manage is printed, so the facts do not depend
# on the host the copy was made of; tests/e2e/salt_system.rs normalises
# what legitimately differs between two runs and says why.
set -u
line() { grep "$1" "$2" | sed "s|^|$2 |"; }
absent() { grep -q "$1" "$2" || echo "$2 no $1"; }

# Users and groups: the account lines, the home directory.
line '^deploy:' /etc/passwd
absent '^olduser:' /etc/passwd
line '^deploy:' /etc/shadow
absent '^olduser:' /etc/shadow
for g in devs deploy oldgroup olduser; do
  grep "^$g:" /etc/group | sed 's|^|/etc/group |' || echo "/etc/group no ^$g:"
  grep "^$g:" /etc/gshadow | sed 's|^|/etc/gshadow |' || echo "/etc/gshadow no ^$g:"
done
if [ -d /home/deploy ]; then
  stat -c 'home %n %a %U %G' /home/deploy
  ( cd /home/deploy && find . -mindepth 1 | sort | while read -r f; do
      echo "$(stat -c 'home %n %a %U %G' "$f") $( [ -f "$f" ] && sha256sum < "$f" | cut -d' ' -f1)"
    done )
else
  echo 'home /home/deploy missing'
fi

# sysctl: the live value (the namespace's own) and the boot file.
echo "sysctl net.ipv4.ip_forward $(cat /proc/sys/net/ipv4/ip_forward)"
f=/etc/sysctl.d/99-salt.conf
[ -e "$f" ] && sed "s|^|$f |" "$f" || echo "$f missing"
grep -H '^[^#]*net.ipv4.ip_forward' /etc/sysctl.conf /etc/sysctl.d/*.conf | grep -v '^/etc/sysctl.d/99-salt.conf:'

# /etc/hosts: the lines of the addresses and names managed.
grep -E '10\.0\.0\.(5|9)|db\.internal|old-db' /etc/hosts | sed 's|^|/etc/hosts |'

# root's crontab: the spool file as it is, with its owner and mode.
c=/var/spool/cron/crontabs/root
stat -c "cron %n %a %U %G" "$c"
sed "s|^|$c |" "$c"

# The time zone.
echo "timezone /etc/timezone $(cat /etc/timezone)"
echo "timezone /etc/localtime -> $(readlink /etc/localtime)"

# The mount: the fstab line and the live mount.
grep -E '[[:space:]]/srv/ref-system/data[[:space:]]' /etc/fstab | sed 's|^|/etc/fstab |'
grep ' /srv/ref-system/data ' /proc/mounts | cut -d' ' -f1-3 | sed 's|^|mounted |'

# The checkout.
g=/srv/ref-system/app
echo "git HEAD $(git -C "$g" rev-parse HEAD 2>&1)"
echo "git branch $(git -C "$g" symbolic-ref --short HEAD 2>&1)"
echo "git status $(git -C "$g" status --porcelain 2>&1 | tr '\n' ' ')"
[ -f "$g/README" ] && echo "git README $(cat "$g/README")"

# cmd.script's file.
echo "script $(cat /srv/ref-system/setup.done 2>&1)"

# Packages: dpkg's status and version of each.
for p in halite-ref-a halite-ref-b halite-ref-c; do
  echo "pkg $p $(dpkg-query -W -f='${Status} ${Version}' "$p" 2>/dev/null || echo not known)"
done
[ -e /etc/halite-ref-c.conf ] && echo "pkg conffile /etc/halite-ref-c.conf kept" || echo "pkg conffile /etc/halite-ref-c.conf gone"

# The repository: its sources file and key.
for f in /etc/apt/sources.list.d/example.list; do
  [ -e "$f" ] && sed "s|^|$f |" "$f" || echo "$f missing"
done
find /etc/apt/keyrings /etc/apt/trusted.gpg.d /usr/share/keyrings -newer /srv/ref-system/app.git/README -type f 2>/dev/null | sort | while read -r k; do
  echo "key $k $(stat -c %a "$k") $(sha256sum "$k" | cut -d' ' -f1)"
done

# Services on the stand-in systemd (files/systemctl): the enablement
# symlinks, which units are active, how often each was started, stopped,
# restarted and reloaded, and the files the watched states manage.
find /etc/systemd/system -path '*.wants/halite-*' | sort | while read -r l; do
  echo "unit link $l -> $(readlink "$l")"
done
for u in web api worker cache steady timer legacy old; do
  u=halite-$u.service
  [ -e "/var/lib/ref-systemd/active/$u" ] && a=active || a=inactive
  counts=
  for verb in start stop restart reload; do
    n=$(cat "/var/lib/ref-systemd/count/$u.$verb" 2>/dev/null || echo 0)
    counts="$counts $verb=$n"
  done
  echo "unit $u $a$counts"
done
for f in web api worker cache; do
  sed -n l "/etc/halite-ref/$f.conf" | sed "s|^|conf /etc/halite-ref/$f.conf |"
done
