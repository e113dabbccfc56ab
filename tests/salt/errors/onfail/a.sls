restart:
  cmd.run:
    - name: systemctl restart app
    - onfail:
      - pkg: app
app:
  pkg.installed: []
