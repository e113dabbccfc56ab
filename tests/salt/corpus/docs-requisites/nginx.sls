nginx:
  pkg.installed:
    - name: nginx-light
  service.running:
    - enable: True
    - require:
      - pkg: nginx
