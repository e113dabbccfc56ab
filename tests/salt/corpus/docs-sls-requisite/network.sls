network-up:
  cmd.run:
    - name: 'true'
