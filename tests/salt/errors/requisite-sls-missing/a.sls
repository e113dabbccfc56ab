x:
  cmd.run:
    - name: 'true'
    - require:
      - sls: database
