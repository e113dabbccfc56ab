x:
  cmd.run:
    - name: 'true'
    - order: soon
