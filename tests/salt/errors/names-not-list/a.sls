tools:
  pkg.installed:
    - names: git vim
