"""Iterate any source on a background thread, a few items ahead: how the store's readers and the recorder's
image loader overlap reading with the work that consumes it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from typing import Any

_END = object()


def prefetched(source: Iterator[Any], depth: int) -> Generator[Any, None, None]:
    """Iterate ``source`` on a background thread, ``depth`` items ahead.

    Exceptions of the source are re-raised here; when the consumer stops early, the thread is stopped
    and the source closed (its ``finally`` blocks run, on that thread). A queue and a thread, not
    SAELens' ``PrefetchingIterator``: importing SAELens costs seconds, and reading a store must not.
    """
    ahead: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def offer(item: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not offer((item, None)):
                    return
            offer((_END, None))
        except BaseException as exc:
            offer((_END, exc))
        finally:
            if hasattr(source, "close"):
                source.close()

    thread = threading.Thread(target=produce, name="vsl-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = ahead.get()
            if exc is not None:
                raise exc
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()
