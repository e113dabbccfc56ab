x:
  file.manged:
    - name: /etc/x
