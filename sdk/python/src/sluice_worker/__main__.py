"""Serve an unchanged function as a sluice exec-kernel worker, with no wrapper file.

    python -m sluice_worker MODULE:FUNCTION

MODULE is imported with the current directory first on ``sys.path`` (the runner starts workers
in the kernel table's directory); FUNCTION may be dotted (``Class.method``). Exit status 64 for
a bad argument or a name that is not a callable; an import that fails shows its traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import List, Optional

from . import _check_protocol_version, serve

USAGE = "usage: python -m sluice_worker MODULE:FUNCTION   (e.g. cpu_task:cpu_intensive_task)"


def main(argv: Optional[List[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print((__doc__ or USAGE).strip())  # no docstrings under -OO
        return
    module_name, _, function_name = args[0].partition(":") if len(args) == 1 else ("", "", "")
    if not module_name or not function_name:
        print(USAGE, file=sys.stderr)
        sys.exit(64)
    _check_protocol_version()  # before importing: a user's module may be slow to load
    sys.path.insert(0, os.getcwd())
    fn = importlib.import_module(module_name)
    for part in function_name.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        print(f"sluice_worker: {args[0]} is not a callable; {USAGE}", file=sys.stderr)
        sys.exit(64)
    serve(fn)


if __name__ == "__main__":
    main()
