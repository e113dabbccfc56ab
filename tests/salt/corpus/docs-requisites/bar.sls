include:
  - foo

bar:
  pkg.installed:
    - require:
      - sls: foo
