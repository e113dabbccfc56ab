apache:
  lookup:
    config:
      tmpl: salt://apache/files/httpd.conf
