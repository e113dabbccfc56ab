nginx:
  pkg:
    - version: '1.2'
