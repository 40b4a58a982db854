#!/usr/bin/env python3
"""Fails when a crate's top-level modules import each other in a circle.

Reads `crate::<module>` paths in code (comments and `#[cfg(test)]` parts ignored), builds the
graph between the top-level modules of each crate's src/, and prints every cycle it finds.
Usage: scripts/module-cycles.py CRATE_SRC_DIR...
"""
import glob
import os
import re
import sys


def module_of(root, path):
    parts = os.path.relpath(path, root)[:-3].split("/")
    if parts[-1] == "mod":
        parts = parts[:-1]
    return None if parts in (["lib"], ["main"]) else parts[0]


def edges_of(root):
    edges = {}
    for path in glob.glob(os.path.join(root, "**", "*.rs"), recursive=True):
        source = module_of(root, path)
        if source is None:
            continue
        with open(path, encoding="utf-8") as f:
            code = re.split(r"#\[cfg\(test\)\]", f.read())[0]
        code = re.sub(r"//[^\n]*", "", code)
        for target in re.findall(r"crate::(\w+)", code):
            if target != source:
                edges.setdefault(source, set()).add(target)
    return edges


def cycles(edges):
    found = set()

    def walk(node, path):
        for target in sorted(edges.get(node, ())):
            if target in path:
                loop = path[path.index(target):]
                start = loop.index(min(loop))
                loop = loop[start:] + loop[:start]
                found.add(" -> ".join(loop + [loop[0]]))
            else:
                walk(target, path + [target])

    for node in sorted(edges):
        walk(node, [node])
    return sorted(found)


def main(roots):
    failed = False
    for root in roots:
        for loop in cycles(edges_of(root)):
            print(f"module cycle in {root}: {loop}")
            failed = True
    if not failed:
        print(f"module cycles: none in {', '.join(roots)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
