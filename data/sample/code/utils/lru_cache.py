"""A least-recently-used cache with optional time-to-live.

``functools.lru_cache`` is the right tool for memoising pure functions. This
class is for the other case: an explicit cache object that several parts of
a program share, that can be inspected, and whose entries may go stale.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Generic, Hashable, Optional, Tuple, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class LRUCache(Generic[K, V]):
    """Thread-safe LRU cache.

    >>> cache = LRUCache(capacity=2)
    >>> cache.put("a", 1); cache.put("b", 2)
    >>> cache.get("a")          # "a" is now the most recently used
    1
    >>> cache.put("c", 3)       # evicts "b"
    >>> "b" in cache
    False
    >>> cache.stats()
    {'hits': 1, 'misses': 0, 'evictions': 1, 'size': 2}
    """

    def __init__(self, capacity: int, ttl: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.ttl = ttl
        self._clock = clock
        self._data: "OrderedDict[K, Tuple[V, float]]" = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: K) -> bool:
        # Membership tests do not count as a "use" and do not touch stats.
        with self._lock:
            item = self._data.get(key)
            return item is not None and not self._expired(item[1])

    def get(self, key: K, default: Optional[V] = None) -> Optional[V]:
        with self._lock:
            item = self._data.get(key, _MISSING)
            if item is _MISSING:
                self.misses += 1
                return default
            value, stamp = item
            if self._expired(stamp):
                del self._data[key]
                self.misses += 1
                return default
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
            self._data[key] = (value, self._clock())
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)  # oldest first
                self.evictions += 1

    def get_or_compute(self, key: K, compute: Callable[[K], V]) -> V:
        """Return the cached value, computing and storing it on a miss.

        ``compute`` runs outside the lock, so a slow computation does not
        block other readers; two threads may occasionally compute the same
        key, and the later result wins.
        """
        value = self.get(key, _MISSING)  # type: ignore[arg-type]
        if value is not _MISSING:
            return value  # type: ignore[return-value]
        value = compute(key)
        self.put(key, value)
        return value

    def pop(self, key: K, default: Optional[V] = None) -> Optional[V]:
        with self._lock:
            item = self._data.pop(key, None)
            return default if item is None else item[0]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses,
                "evictions": self.evictions, "size": len(self._data)}

    def _expired(self, stamp: float) -> bool:
        return self.ttl is not None and self._clock() - stamp > self.ttl


def cached(capacity: int = 128, ttl: Optional[float] = None):
    """Decorator version for single-argument functions."""
    def wrap(fn):
        cache: LRUCache = LRUCache(capacity, ttl)

        def inner(arg):
            return cache.get_or_compute(arg, fn)

        inner.cache = cache  # type: ignore[attr-defined]
        inner.__name__ = fn.__name__
        inner.__doc__ = fn.__doc__
        return inner
    return wrap


if __name__ == "__main__":
    @cached(capacity=64)
    def slow_square(n: int) -> int:
        time.sleep(0.01)
        return n * n

    start = time.perf_counter()
    for _ in range(3):
        for i in range(20):
            slow_square(i)
    elapsed = time.perf_counter() - start
    print(f"60 calls in {elapsed:.2f}s, stats={slow_square.cache.stats()}")
