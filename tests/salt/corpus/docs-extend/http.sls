apache:
  file.managed:
    - name: /etc/httpd/conf/httpd.conf
    - source: salt://http/httpd.conf
