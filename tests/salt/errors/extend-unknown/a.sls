extend:
  apache:
    service:
      - watch:
        - file: conf
