include:
  - nginx.config
  - .users
x:
  cmd.run:
    - name: 'true'
