"""A libzmq subscriber (pyzmq) on halite's outside event publisher.

Usage: subscribe.py ENDPOINT PREFIX COUNT
Prints `ready`, then one JSON line per event received ({"tag", "event"}),
and exits after COUNT events. Proof that any ZeroMQ client can listen,
filtered by tag prefix.
"""
import json
import sys

import zmq

endpoint, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
socket = zmq.Context().socket(zmq.SUB)
socket.connect(endpoint)
socket.setsockopt_string(zmq.SUBSCRIBE, prefix)
print("ready", flush=True)
for _ in range(count):
    tag, body = socket.recv_multipart()
    print(json.dumps({"tag": tag.decode(), "event": json.loads(body)}), flush=True)
