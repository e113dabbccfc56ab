base:
  '*':
    - apache
    - apache.conf
