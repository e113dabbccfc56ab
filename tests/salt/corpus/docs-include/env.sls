include:
  - dev: http
