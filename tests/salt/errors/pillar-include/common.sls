common:
  cmd.run:
    - name: 'true'
