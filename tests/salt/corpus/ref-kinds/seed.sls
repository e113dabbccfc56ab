# The files the edits of kinds.sls work on, as a fresh host would have them.
sshd-config:
  file.managed:
    - name: /srv/halite-ref/etc/ssh/sshd_config
    - contents:
      - Port 22
      - '#PermitRootLogin prohibit-password'
    - makedirs: True

motd:
  file.managed:
    - name: /srv/halite-ref/etc/motd
    - contents: welcome
    - makedirs: True

hosts:
  file.managed:
    - name: /srv/halite-ref/etc/hosts
    - contents: 127.0.0.1 localhost
    - makedirs: True

limits:
  file.managed:
    - name: /srv/halite-ref/etc/security/limits.conf
    - contents:
      - '# End of defaults'
      - '@staff hard nproc 50'
    - makedirs: True

example:
  file.managed:
    - name: /srv/halite-ref/usr/share/app/app.conf.example
    - contents: example = true
    - makedirs: True

cert:
  file.managed:
    - name: /srv/halite-ref/etc/ssl/site.pem
    - contents: not a real certificate
    - makedirs: True
