"{% raw %}{{ app }}{% endraw %}-conf":
  file.managed:
    - name: /etc/app.conf
    - contents: x
app-conf:
  file.managed:
    - name: /etc/app2.conf
    - contents: "port {% raw %}{{ port }}{% endraw %}"
