base:
  '*':
    - common
{% for role in grains['roles'] %}
    - {{ role }}
{% endfor %}
