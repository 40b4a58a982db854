#!/usr/bin/env python3
"""Prints the dispatcher's configured environment from rendered manifests, one KEY=VALUE per
line: the sluice-dispatcher ConfigMap's data, and DISPATCHER_MEMORY_LIMIT from the Deployment's
memory limit, as the downward API gives it. `make validate` runs `dispatcher render-job` with
it, so the start-up checks and the offline validators see the values users deploy.

Usage: scripts/configured-env.py target/manifests.yaml
"""
import re
import sys

import yaml

UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def to_bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)([kMG]i?|Ki)?", quantity)
    if not match:
        sys.exit(f"configured-env: unsupported memory quantity {quantity!r}")
    return int(match.group(1)) * UNITS[match.group(2) or ""]


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    config = named[("ConfigMap", "sluice-dispatcher")]["data"]
    for key, value in sorted(config.items()):
        print(f"{key}={value}")
    pod = named[("Deployment", "sluice-dispatcher")]["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "dispatcher")
    print(f"DISPATCHER_MEMORY_LIMIT={to_bytes(container['resources']['limits']['memory'])}")


if __name__ == "__main__":
    main()
