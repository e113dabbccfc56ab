vim:
  pkg.installed:
    - order: 1
