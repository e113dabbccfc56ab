foo-setup:
  cmd.run:
    - name: 'true'
