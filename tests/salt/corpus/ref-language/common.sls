motd:
  file.managed:
    - name: /srv/halite-ref/etc/motd
    - contents: managed by salt
    - mode: 0644
    - makedirs: True
