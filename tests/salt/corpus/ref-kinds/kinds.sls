include:
  - seed

sshd-root-login:
  file.replace:
    - name: /srv/halite-ref/etc/ssh/sshd_config
    - pattern: '^#?PermitRootLogin .*$'
    - repl: PermitRootLogin no
    - append_if_not_found: True
    - require:
      - sls: seed

profile-path:
  file.append:
    - name: /srv/halite-ref/etc/profile.d/opt.sh
    - text:
      - export PATH=$PATH:/opt/bin
    - makedirs: True

motd-header:
  file.prepend:
    - name: /srv/halite-ref/etc/motd
    - text: '# managed by halite'
    - require:
      - file: motd

hosts-block:
  file.blockreplace:
    - name: /srv/halite-ref/etc/hosts
    - marker_start: '# BEGIN internal'
    - marker_end: '# END internal'
    - content: |
        10.0.0.7 cache
    - append_if_not_found: True
    - require:
      - file: hosts

limits-line:
  file.line:
    - name: /srv/halite-ref/etc/security/limits.conf
    - mode: ensure
    - after: '^# End of defaults'
    - content: '*  soft  nofile  65536'
    - require:
      - file: limits

app-default:
  file.copy:
    - name: /srv/halite-ref/etc/app/app.conf
    - source: /srv/halite-ref/usr/share/app/app.conf.example
    - makedirs: True
    - require:
      - file: example

site-cert:
  file.exists:
    - name: /srv/halite-ref/etc/ssl/site.pem
    - require:
      - file: cert

no-override:
  file.missing:
    - name: /srv/halite-ref/etc/app/override.conf

site:
  file.recurse:
    - name: /srv/halite-ref/srv/www
    - source: salt://files/www
    - clean: True
    - exclude_pat: '*.bak'
    - file_mode: '0644'
    - dir_mode: '0755'
    - makedirs: True

app-extra:
  file.managed:
    - name: /srv/halite-ref/etc/app/extra.conf
    - source:
      - salt://files/extra-web01.conf
      - salt://files/extra.conf
    - source_hash: sha256=ffd3aa918fa024373111ccadfbe9aa8033befa92f1701cd712bee1d8950af85e
    - makedirs: True

tool-release:
  archive.extracted:
    - name: /srv/halite-ref/opt/tool
    - source: salt://files/tool.tar
    - source_hash: sha256=334608a56188bd9b9b437e14daab0a2b7c80bb16216fe0a5622c1502a5fbe425

reload-app:
  cmd.wait:
    - name: echo reloaded
    - watch:
      - file: app-extra
