"""The user's own code: a CPU-bound function as the classic pool manager runs it.

Nothing here knows about sluice. In the pool-manager design a ``multiprocessing.Pool`` calls
``cpu_intensive_task(data)`` for each message body; sluice runs the very same function as an exec
kernel with ``python -m sluice_worker cpu_task:cpu_intensive_task`` (see ``kernels.toml``).

``CPU_TASK_LOOPS`` (read once, at import) shrinks the loop for tests and benchmarks; the default,
2,000,000 iterations, takes a few tenths of a second in CPython.
"""

import os
import zlib

LOOPS = int(os.environ.get("CPU_TASK_LOOPS", "2000000"))


def cpu_intensive_task(data):
    """Burn CPU on one message body (a string) and return an int that depends on it."""
    seed = zlib.crc32(data.encode("utf-8")) % 997  # not hash(): that differs between processes
    result = 0
    for i in range(1, LOOPS):
        result += (i * i + seed) % 997
    return result
