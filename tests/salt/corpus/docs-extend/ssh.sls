ssh-server:
  service.running:
    - name: ssh
