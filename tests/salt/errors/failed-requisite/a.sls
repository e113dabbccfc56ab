conf:
  file.managed:
    - name: etc/app.conf
    - contents: x
restart:
  cmd.run:
    - name: 'true'
    - watch:
      - file: conf
