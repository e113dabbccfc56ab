base:
  '*':
    - issue
