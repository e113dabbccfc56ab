include:
  - app.defaults
  - users:
      defaults:
        sudo: [bob]
      key: users
app:
  port: 80
