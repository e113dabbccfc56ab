include:
  - db
  - web.config

web-pkg:
  pkg.installed:
    - name: nginx
