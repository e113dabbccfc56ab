exclude:
  - sls: nginx
