"""Graph search on adjacency-list graphs.

A graph is a plain ``dict`` mapping each node to an iterable of neighbours.
For weighted graphs, neighbours are ``(node, weight)`` pairs. Nodes can be
any hashable value: strings, ints, tuples of grid coordinates...

Example::

    roads = {
        "Linchuan": [("Qinglan", 58.0), ("Haining", 90.5)],
        "Qinglan": [("Linchuan", 58.0), ("Baisha", 31.2)],
        "Baisha": [("Qinglan", 31.2)],
        "Haining": [("Linchuan", 90.5)],
    }
    dist, path = dijkstra(roads, "Haining", "Baisha")
    # dist is about 179.7, path == ["Haining", "Linchuan", "Qinglan", "Baisha"]
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Dict, Hashable, Iterable, List, Optional, Tuple

Node = Hashable
Graph = Dict[Node, Iterable[Node]]
WeightedGraph = Dict[Node, Iterable[Tuple[Node, float]]]


def bfs_order(graph: Graph, start: Node) -> List[Node]:
    """Nodes reachable from ``start`` in breadth-first order."""
    seen = {start}
    order = []
    queue = deque([start])
    while queue:
        node = queue.popleft()
        order.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return order


def shortest_path_unweighted(graph: Graph, start: Node, goal: Node) -> Optional[List[Node]]:
    """Fewest-edges path from ``start`` to ``goal``, or None if unreachable."""
    if start == goal:
        return [start]
    parent: Dict[Node, Node] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        node = queue.popleft()
        for nxt in graph.get(node, ()):
            if nxt in seen:
                continue
            seen.add(nxt)
            parent[nxt] = node
            if nxt == goal:
                return _rebuild(parent, start, goal)
            queue.append(nxt)
    return None


def dfs_order(graph: Graph, start: Node) -> List[Node]:
    """Iterative depth-first order (no recursion limit to worry about)."""
    seen = set()
    order = []
    stack = [start]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        order.append(node)
        # Push neighbours in reverse so they are visited in listed order.
        for nxt in reversed(list(graph.get(node, ()))):
            if nxt not in seen:
                stack.append(nxt)
    return order


def dijkstra(graph: WeightedGraph, start: Node, goal: Optional[Node] = None):
    """Single-source shortest paths with non-negative edge weights.

    Returns ``(dist, prev)`` when ``goal`` is None, otherwise
    ``(distance, path)`` for the single goal (``(inf, None)`` if unreachable).
    """
    dist: Dict[Node, float] = {start: 0.0}
    prev: Dict[Node, Node] = {}
    # The counter breaks ties so that nodes themselves never get compared;
    # mixing e.g. str and int nodes would otherwise raise TypeError.
    counter = itertools.count()
    heap = [(0.0, next(counter), start)]
    done = set()
    while heap:
        d, _, node = heapq.heappop(heap)
        if node in done:
            continue  # stale entry
        done.add(node)
        if node == goal:
            break
        for nxt, weight in graph.get(node, ()):
            if weight < 0:
                raise ValueError(f"negative edge weight {weight} on {node!r} -> {nxt!r}")
            nd = d + weight
            if nd < dist.get(nxt, float("inf")):
                dist[nxt] = nd
                prev[nxt] = node
                heapq.heappush(heap, (nd, next(counter), nxt))
    if goal is None:
        return dist, prev
    if goal not in dist:
        return float("inf"), None
    return dist[goal], _rebuild(prev, start, goal)


def topological_sort(graph: Graph) -> List[Node]:
    """Kahn's algorithm. Raises ValueError if the graph has a cycle."""
    indegree: Dict[Node, int] = {n: 0 for n in graph}
    for node in graph:
        for nxt in graph[node]:
            indegree[nxt] = indegree.get(nxt, 0) + 1
    ready = deque(sorted((n for n, d in indegree.items() if d == 0), key=repr))
    order = []
    while ready:
        node = ready.popleft()
        order.append(node)
        for nxt in graph.get(node, ()):
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    if len(order) != len(indegree):
        stuck = [n for n, d in indegree.items() if d > 0]
        raise ValueError(f"graph has a cycle involving {stuck[:5]}")
    return order


def grid_neighbours(grid: List[str], cell: Tuple[int, int]):
    """4-connected open neighbours of ``cell`` in a grid of '.' and '#'."""
    r, c = cell
    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        nr, nc = r + dr, c + dc
        if 0 <= nr < len(grid) and 0 <= nc < len(grid[nr]) and grid[nr][nc] != "#":
            yield (nr, nc)


def _rebuild(prev: Dict[Node, Node], start: Node, goal: Node) -> List[Node]:
    path = [goal]
    while path[-1] != start:
        path.append(prev[path[-1]])
    path.reverse()
    return path


if __name__ == "__main__":
    maze = [
        "..#.....",
        ".##.###.",
        "........",
        ".#####.#",
        "......#.",
    ]
    graph = {
        (r, c): list(grid_neighbours(maze, (r, c)))
        for r, row in enumerate(maze)
        for c, ch in enumerate(row)
        if ch == "."
    }
    path = shortest_path_unweighted(graph, (0, 0), (4, 5))
    print("maze path:", len(path) - 1, "steps")
    courses = {"intro": ["data"], "data": ["ml", "db"], "ml": ["nlp"], "db": [], "nlp": []}
    print("course order:", topological_sort(courses))
