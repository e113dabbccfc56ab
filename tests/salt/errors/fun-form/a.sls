conf:
  file.managed:
    - name: /etc/app.conf
    - contents: x
    - onlyif:
      - fun: file.file_exists
        path: /etc/app
