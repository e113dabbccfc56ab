include:
  - dev:nginx
