sync:
  module.run:
    - saltutil.sync_all: []
