exclude:
  - sls: http
  - id: /etc/vimrc
