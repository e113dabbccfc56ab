httpd:
  pkg.installed:
    - require_in:
      - service: httpd
  service.running: []
