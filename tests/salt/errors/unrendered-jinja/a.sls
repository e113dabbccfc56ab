"{{ app }}-conf":
  file.managed:
    - name: /etc/app.conf
    - contents: x
app-conf:
  file.managed:
    - name: /etc/app.conf
    - contents: "port {{ port }}"
