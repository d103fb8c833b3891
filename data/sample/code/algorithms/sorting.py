"""Classic comparison sorts, written for clarity rather than speed.

Every function takes a list and returns a *new* sorted list; the input is
never modified. All of them accept an optional ``key`` function, like the
built-in :func:`sorted`, so that records can be sorted by a field.

>>> merge_sort([5, 2, 9, 1, 5, 6])
[1, 2, 5, 5, 6, 9]
>>> quick_sort(["pear", "fig", "apple"], key=len)
['fig', 'pear', 'apple']
"""

from __future__ import annotations

import random
from typing import Callable, List, Optional, Sequence, TypeVar

T = TypeVar("T")
KeyFunc = Optional[Callable[[T], object]]


def _identity(x):
    return x


def insertion_sort(items: Sequence[T], key: KeyFunc = None) -> List[T]:
    """Stable insertion sort. O(n^2) comparisons, but fast for tiny inputs.

    Useful as the base case of the recursive sorts below: for lists of a
    dozen elements or so it beats merge sort because it has no call overhead.
    """
    key = key or _identity
    out = list(items)
    for i in range(1, len(out)):
        current = out[i]
        current_key = key(current)
        j = i - 1
        # Shift larger elements one slot to the right. Using ">" (not ">=")
        # keeps equal elements in their original order, i.e. the sort is stable.
        while j >= 0 and key(out[j]) > current_key:
            out[j + 1] = out[j]
            j -= 1
        out[j + 1] = current
    return out


def merge_sort(items: Sequence[T], key: KeyFunc = None, cutoff: int = 12) -> List[T]:
    """Stable top-down merge sort, O(n log n) in every case.

    Lists shorter than ``cutoff`` are handed to :func:`insertion_sort`.
    """
    key = key or _identity
    if len(items) <= cutoff:
        return insertion_sort(items, key)
    mid = len(items) // 2
    left = merge_sort(items[:mid], key, cutoff)
    right = merge_sort(items[mid:], key, cutoff)
    return _merge(left, right, key)


def _merge(left: List[T], right: List[T], key) -> List[T]:
    merged: List[T] = []
    i = j = 0
    while i < len(left) and j < len(right):
        # "<=" takes from the left run on ties, which preserves stability.
        if key(left[i]) <= key(right[j]):
            merged.append(left[i])
            i += 1
        else:
            merged.append(right[j])
            j += 1
    merged.extend(left[i:])
    merged.extend(right[j:])
    return merged


def quick_sort(items: Sequence[T], key: KeyFunc = None, seed: Optional[int] = None) -> List[T]:
    """Quicksort with a random pivot and three-way partitioning.

    Three-way partitioning ("Dutch national flag") puts everything equal to
    the pivot in the middle bucket, so inputs with many duplicates do not
    degrade to quadratic time. Not stable.
    """
    key = key or _identity
    rng = random.Random(seed)

    def _sort(seq: List[T]) -> List[T]:
        if len(seq) <= 1:
            return seq
        pivot_key = key(seq[rng.randrange(len(seq))])
        less, equal, greater = [], [], []
        for x in seq:
            k = key(x)
            if k < pivot_key:
                less.append(x)
            elif k > pivot_key:
                greater.append(x)
            else:
                equal.append(x)
        return _sort(less) + equal + _sort(greater)

    return _sort(list(items))


def heap_sort(items: Sequence[T], key: KeyFunc = None) -> List[T]:
    """In-place heapsort on a copy of the input. O(n log n), not stable."""
    key = key or _identity
    a = list(items)
    n = len(a)

    def sift_down(start: int, end: int) -> None:
        root = start
        while True:
            child = 2 * root + 1
            if child > end:
                return
            # Pick the larger of the two children.
            if child + 1 <= end and key(a[child]) < key(a[child + 1]):
                child += 1
            if key(a[root]) < key(a[child]):
                a[root], a[child] = a[child], a[root]
                root = child
            else:
                return

    # Build a max-heap, starting from the last parent node.
    for start in range(n // 2 - 1, -1, -1):
        sift_down(start, n - 1)
    # Repeatedly move the maximum to the end and restore the heap.
    for end in range(n - 1, 0, -1):
        a[0], a[end] = a[end], a[0]
        sift_down(0, end - 1)
    return a


def counting_sort(values: Sequence[int]) -> List[int]:
    """Sort non-negative integers in O(n + k) time, where k = max(values)."""
    if not values:
        return []
    if min(values) < 0:
        raise ValueError("counting_sort only handles non-negative integers")
    counts = [0] * (max(values) + 1)
    for v in values:
        counts[v] += 1
    out: List[int] = []
    for value, count in enumerate(counts):
        out.extend([value] * count)
    return out


def is_sorted(items: Sequence[T], key: KeyFunc = None) -> bool:
    key = key or _identity
    return all(key(items[i]) <= key(items[i + 1]) for i in range(len(items) - 1))


if __name__ == "__main__":
    rng = random.Random(42)
    data = [rng.randint(0, 999) for _ in range(2_000)]
    expected = sorted(data)
    for fn in (insertion_sort, merge_sort, quick_sort, heap_sort, counting_sort):
        result = fn(data)
        assert result == expected, fn.__name__
        print(f"{fn.__name__:>15}: ok ({len(result)} items)")
