/etc/nginx/nginx.conf:
  file.managed:
    - source: salt://web/files/nginx.conf
    - require:
      - pkg: web-pkg
