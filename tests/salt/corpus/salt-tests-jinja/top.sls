base:
  '*':
    - issue-54765
