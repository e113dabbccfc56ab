base:
  '*':
    - urls
