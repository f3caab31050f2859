"""Reading a package's files the way a steady workload does: every file, whole, in path order.

Plain Python with no ember import, so the same code runs in an ember container on image T and in
a bare `runc run` on the same tree in a local directory (`python3 tree_reader.py <package>`).
"""

import importlib.util
import json
import os
import sys
import time

BLOCK = 1 << 20


def package_dir(name: str) -> str:
    """Where an installed package lives, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"no installed package named {name!r}")
    return next(iter(spec.submodule_search_locations))


def read_passes(name: str, passes: int = 2) -> dict:
    """Read every file of the package `passes` times; the seconds each pass took, the files and
    the bytes of one pass. The first pass may fetch; the later ones are the steady state."""
    root = package_dir(name)
    paths = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        paths += [os.path.join(directory, f) for f in sorted(filenames)]
    buffer = bytearray(BLOCK)
    seconds, total = [], 0
    for _ in range(passes):
        total = 0
        started = time.perf_counter()
        for path in paths:
            with open(path, "rb", buffering=0) as file:
                while count := file.readinto(buffer):
                    total += count
        seconds.append(time.perf_counter() - started)
    return {"seconds": seconds, "files": len(paths), "bytes": total}


if __name__ == "__main__":
    print(json.dumps(read_passes(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)))
