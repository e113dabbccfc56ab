base:
  '*':
    - system
