# Every state kind halite added for issue #19, in Salt's own form (a list
# of single-key arguments, `True`, `salt://` sources): halite loads it
# unchanged. tests/e2e/kinds.rs applies it with `halite-agent apply
# --local` under a throwaway root, twice: the second run changes nothing.

sshd-root-login:
  file.replace:
    - name: /etc/ssh/sshd_config
    - pattern: '^#?PermitRootLogin .*$'
    - repl: PermitRootLogin no
    - append_if_not_found: True

profile-path:
  file.append:
    - name: /etc/profile.d/opt.sh
    - text:
      - export PATH=$PATH:/opt/bin
    - makedirs: True

motd-header:
  file.prepend:
    - name: /etc/motd
    - text: '# managed by halite'

hosts-block:
  file.blockreplace:
    - name: /etc/hosts
    - marker_start: '# BEGIN internal'
    - marker_end: '# END internal'
    - content: |
        10.0.0.7 cache
    - append_if_not_found: True

limits-line:
  file.line:
    - name: /etc/security/limits.conf
    - mode: ensure
    - after: '^# End of defaults'
    - content: '*  soft  nofile  65536'

app-default:
  file.copy:
    - name: /etc/app/app.conf
    - source: /usr/share/app/app.conf.example
    - makedirs: True

site-cert:
  file.exists:
    - name: /etc/ssl/site.pem

no-override:
  file.missing:
    - name: /etc/app/override.conf

site:
  file.recurse:
    - name: /srv/www
    - source: salt://files/www
    - clean: True
    - exclude_pat: '*.bak'
    - file_mode: '0644'
    - dir_mode: '0755'

app-extra:
  file.managed:
    - name: /etc/app/extra.conf
    - source:
      - salt://files/extra-web01.conf
      - salt://files/extra.conf
    - source_hash: sha256=ffd3aa918fa024373111ccadfbe9aa8033befa92f1701cd712bee1d8950af85e

app-code:
  git.latest:
    - name: ./app.git
    - target: /srv/app
    - rev: main

tool-release:
  archive.extracted:
    - name: /opt/tool
    - source: salt://files/tool.tar
    - source_hash: sha256=334608a56188bd9b9b437e14daab0a2b7c80bb16216fe0a5622c1502a5fbe425

example-repo:
  pkgrepo.managed:
    - name: deb https://apt.example.com/debian bookworm main
    - file: /etc/apt/sources.list.d/example.list
    - key_url: salt://files/example.asc

openssl:
  pkg.latest:
    - refresh: True

telnet:
  pkg.removed: []

old-daemons:
  pkg.purged:
    - pkgs:
      - telnetd
      - rsh-server

chrony:
  service.enabled: []

cups:
  service.disabled: []

nginx:
  service.running:
    - reload: True
    - init_delay: 0
    - watch:
      - file: app-extra

reload-app:
  cmd.wait:
    - name: echo reloaded
    - watch:
      - file: app-extra

/srv/data:
  mount.mounted:
    - device: /dev/vdb1
    - fstype: ext4
    - opts: noatime
    - mkmnt: True

setup:
  cmd.script:
    - source: salt://files/setup.sh
    - args: setup.done
    - unless: test -e setup.done

vm.swappiness:
  sysctl.present:
    - value: 10

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

devs:
  group.present:
    - gid: 2000

deploy:
  user.present:
    - uid: 1500
    - shell: /bin/bash
    - groups:
      - devs
    - require:
      - group: devs

olduser:
  user.absent: []

oldgroup:
  group.absent: []
