"""Dependency graphs among tasks submitted together: reject cycles, order parents first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from creep.domain.errors import ValidationError


def topological_order(edges: Mapping[str, Sequence[str]]) -> list[str]:
    """Order nodes so every node comes after the nodes it depends on.

    `edges[node]` lists what `node` depends on; dependencies outside `edges` are ignored
    (they already exist). Raises ValidationError naming one cycle.
    """
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in edges:
        if state.get(root) == 2:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                state[node] = 1
                path.append(node)
            deps = [d for d in edges.get(node, ()) if d in edges]
            if i < len(deps):
                stack.append((node, i + 1))
                dep = deps[i]
                if state.get(dep) == 1:
                    cycle = [*path[path.index(dep):], dep]
                    raise ValidationError.single(
                        "depends_on", "dependency cycle: " + " -> ".join(cycle)
                    )
                if state.get(dep) != 2:
                    stack.append((dep, 0))
            else:
                state[node] = 2
                path.pop()
                order.append(node)
    return order
