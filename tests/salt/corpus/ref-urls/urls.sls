# file.managed from URLs (issue #19): served/ is served on 127.0.0.19:8019
# by the recording (record.sh with SERVE); the e2e test serves it on a free
# port and rewrites these URLs.
/srv/halite-ref/motd:
  file.managed:
    - source: http://127.0.0.19:8019/motd
    - source_hash: sha256=b562d42e7767e3f0aaf8ecb84b04fdfc2f60a125ea6dc9321ec9544b4f362c43
    - mode: '0640'
    - makedirs: True

/srv/halite-ref/list/app.conf:
  file.managed:
    - source:
      - http://127.0.0.19:8019/missing
      - http://127.0.0.19:8019/conf
    - skip_verify: True
    - makedirs: True
