# The kinds of issue #19 that act on the host itself (tests/salt/kinds.sls
# has them all; ref-kinds records the file-handling ones), in Salt's form,
# with every name chosen so that tests/salt/isolated.sh can apply them to
# an isolated copy of the system. seed.sh prepares that copy (with a
# stand-in systemd for the service kinds, files/systemctl); facts.sh prints
# what the run left there.

devs:
  group.present:
    - gid: 2000

deploy:
  user.present:
    - uid: 1500
    - shell: /bin/bash
    - fullname: Deploy User
    - password: '$6$refsalt$Y9u2h4ukPV4pW67zQASnOerHj6Ggbfi6HMC1TNR72FmsPAlhCR5GCSOw/d3tnSAirnpCNITByUet5A11C4NzX.'
    - groups:
      - devs
    - require:
      - group: devs

olduser:
  user.absent: []

oldgroup:
  group.absent: []

net.ipv4.ip_forward:
  sysctl.present:
    - value: 1
    - config: /etc/sysctl.d/99-salt.conf

db.internal:
  host.present:
    - ip: 10.0.0.5

old-db:
  host.absent:
    - ip: 10.0.0.9

backup:
  cron.present:
    - name: /usr/local/bin/backup --quiet
    - user: root
    - minute: 30
    - hour: 2

old-backup:
  cron.absent:
    - name: /usr/local/bin/old-backup
    - user: root

clock:
  timezone.system:
    - name: Europe/Berlin

/srv/ref-system/data:
  mount.mounted:
    - device: tmpfs
    - fstype: tmpfs
    - opts: noatime
    - mkmnt: True

app-code:
  git.latest:
    - name: /srv/ref-system/app.git
    - target: /srv/ref-system/app
    - rev: main

setup:
  cmd.script:
    - source: salt://files/setup.sh
    - args: setup done
    - unless: test -e /srv/ref-system/setup.done

halite-ref-a:
  pkg.latest:
    - refresh: True

halite-ref-b:
  pkg.removed: []

halite-ref-c:
  pkg.purged: []

example-repo:
  pkgrepo.managed:
    - name: deb [signed-by=/etc/apt/keyrings/example.asc] https://apt.example.com/debian bookworm main
    - file: /etc/apt/sources.list.d/example.list
    - key_url: salt://files/example.asc
    - aptkey: False
    - refresh: False

# Services, on the stand-in systemd seed.sh installs (files/systemctl).
# A watched file that changes reloads (reload: True) or restarts a running
# service; Salt skips the reload or restart when the service state itself
# changed something (started or enabled it), and so must halite.
/etc/halite-ref/web.conf:
  file.managed:
    - contents: port = 8080

halite-web:
  service.running:
    - enable: True
    - reload: True
    - watch:
      - file: /etc/halite-ref/web.conf

/etc/halite-ref/api.conf:
  file.managed:
    - contents: port = 8081

halite-api:
  service.running:
    - enable: True
    - reload: True
    - watch:
      - file: /etc/halite-ref/api.conf

/etc/halite-ref/worker.conf:
  file.managed:
    - contents: port = 8082

halite-worker:
  service.running:
    - watch:
      - file: /etc/halite-ref/worker.conf

/etc/halite-ref/cache.conf:
  file.managed:
    - contents: port = 8083

halite-cache:
  service.running:
    - enable: True
    - reload: True
    - watch:
      - file: /etc/halite-ref/cache.conf

halite-steady:
  service.running:
    - enable: True

halite-timer:
  service.enabled: []

halite-legacy:
  service.disabled: []

halite-old:
  service.dead:
    - enable: False
