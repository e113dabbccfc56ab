base:
  '*':
    - seed
    - kinds
