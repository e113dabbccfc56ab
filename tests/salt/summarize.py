#!/usr/bin/env python3
"""What a Salt run did, in the form tests/salt/expected/*.txt holds.

Usage: summarize.py PLACE RESULT.json
PLACE is the directory the reference trees manage (/srv/halite-ref inside
record.sh's mount namespace); RESULT.json is `salt-call --out json`.

Output, one fact a line: every directory and file under PLACE with its mode
(and a file's sha256), then every command state that ran, in Salt's run
order (`__run_num__`), by its command line (Salt's `name`).
"""
import hashlib
import json
import os
import stat
import sys


def main():
    place, result_path = sys.argv[1], sys.argv[2]
    lines = []
    for dirpath, dirnames, filenames in os.walk(place):
        dirnames.sort()
        for name in sorted(dirnames):
            path = os.path.join(dirpath, name)
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            lines.append(f"dir {os.path.relpath(path, place)} {mode:04o}")
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            lines.append(f"file {os.path.relpath(path, place)} {mode:04o} {digest}")
    with open(result_path) as f:
        result = json.load(f)["local"]
    if not isinstance(result, dict):
        sys.exit(f"salt-call did not return state results: {result}")
    runs = sorted(result.items(), key=lambda kv: kv[1]["__run_num__"])
    for key, ret in runs:
        module, _id, name, function = key.split("_|-")
        if not ret["result"]:
            lines.append(f"failed {module}.{function} {_id}: {ret['comment']}")
        elif module == "cmd" and ret["changes"]:
            lines.append(f"ran {name}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
