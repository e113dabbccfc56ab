db-pkg:
  pkg.installed:
    - name: postgresql
