include:
  - common

extend:
  motd:
    file:
      - mode: 0600

first-one:
  cmd.run:
    - name: echo first
    - order: 1

after-common:
  cmd.run:
    - name: echo after common
    - require:
      - sls: common

myservice:
  file.managed:
    - name: /srv/halite-ref/etc/myservice.conf
    - source:
      - salt://files/missing.conf
      - salt://files/myservice.conf
    - source_hash: sha256=6151d7db75e6f3440046d2832fef5159a53f02ccfac88588a0345d0cad17330b
    - makedirs: True
  cmd.run:
    - name: echo build > /dev/null 2>&1 && echo built
    - onchanges:
      - file: /srv/halite-ref/etc/myservice.conf

app-conf:
  file.managed:
    - name: /srv/halite-ref/etc/app.conf
    - source: salt://files/app.conf.j2
    - template: jinja
    - defaults:
        port: 80
        workers: 2
    - context:
        port: 8080
    - mode: 0640
    - makedirs: True
    - watch_in:
      - cmd: reload-app

reload-app:
  cmd.run:
    - name: echo reloading | tr a-z A-Z
    - unless: 'false'

tools:
  cmd.run:
    - names:
      - echo one
      - echo two
    - unless: test "$(echo skip)" = run

skipped:
  cmd.run:
    - name: echo never
    - onlyif:
      - 'true'
      - test -n "" || false

list-contents:
  file.managed:
    - name: /srv/halite-ref/etc/list.txt
    - contents:
      - first line
      - second line
    - makedirs: True

graceful-down:
  cmd.run:
    - name: echo graceful
    - prereq:
      - file: site-code

site-code:
  file.managed:
    - name: /srv/halite-ref/site/index.html
    - source: salt://files/index.html
    - makedirs: True

restart-app:
  cmd.run:
    - name: echo restart
    - listen:
      - file: list-contents

last-one:
  cmd.run:
    - name: echo last
    - order: last

nginx-light:
  pkg:
    - installed
    - onlyif: 'false'
