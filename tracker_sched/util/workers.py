"""Worker processes that start wherever a library call can be made.

The fit trains ensemble members in ``spawn`` processes (``fork`` after torch has started its
threads is unsafe). A spawned child re-imports the parent's ``__main__`` module before it runs
anything: from a script without an ``if __name__ == "__main__":`` guard that re-runs the whole
script in every child, which then tries to start its own pool and fails ("An attempt has been
made to start a new process before the current process has finished its bootstrapping
phase"), while the parent starts replacement workers for ever. The README's example, pasted
into a script or piped to ``python -``, did exactly that.

Our children never need the user's ``__main__``: every function they run lives in
``tracker_sched`` and is found by its module name. So while the pool's processes start,
:func:`spawn_pool` shows multiprocessing a bare ``__main__`` (``multiprocessing.spawn``
reads ``sys.modules["__main__"]`` to decide what the child imports), and the children start
clean. This keeps real parallel workers for scripts, standard input, ``python -c`` and
notebooks alike; the other way out, detecting an unguarded script and falling back to one
process, would have made the README's users pay the fit's full time on one core, silently.

The swap lasts only while the workers start. A thread of the caller's program that pickles a
function defined in its ``__main__`` during those few hundred milliseconds would not find it.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import sys
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.pool import Pool
from typing import Any

_SWAP = threading.Lock()  # two fits starting pools at once in one process swap one at a time


@contextlib.contextmanager
def _bare_main() -> Iterator[None]:
    with _SWAP:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


def spawn_pool(
    workers: int,
    initializer: Callable[..., object] | None = None,
    initargs: Sequence[Any] = (),
) -> Pool:
    """A ``spawn`` process pool whose workers import no ``__main__`` (see the module docstring).

    The caller owns the pool (``with``, or ``close``/``join``/``terminate``). Its worker
    functions must be importable module-level functions of ``tracker_sched``.
    """
    ctx = mp.get_context("spawn")
    with _bare_main():
        return ctx.Pool(workers, initializer=initializer, initargs=tuple(initargs))


def on_pool(pool: Pool, func: Callable[[Any], Any], jobs: Sequence[Any]) -> list[Any]:
    """``func`` over ``jobs`` on a caller's ``pool`` (left open), results in ``jobs`` order.

    One job per task (``chunksize=1``), so that two callers sharing a pool, each from its
    own thread, interleave member by member and the pool's workers stay busy until the
    last job of either ends.
    """
    return list(pool.map_async(func, jobs, chunksize=1).get())
