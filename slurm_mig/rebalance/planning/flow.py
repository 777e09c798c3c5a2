"""How much demand free instances can serve, for one Slurm GPU type.  Pure.

Demand items (units of one type, each with a weight and the partition groups it may use)
are matched to supply groups (free instances per distinct node partition set).  Items are
taken heaviest first and each is given as many units as augmenting paths allow: already
matched units may move to another group to make room.  The units that can be served
together form a gammoid (a matroid), so this greedy gives the maximum total weight.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple


@dataclass
class Match:
    """The result for one type: units served per item and per (item, group)."""

    served: List[int]  #: per item
    used: List[int]  #: per group
    flow: List[Dict[int, int]]  #: per item: group -> units
    weight: float  #: total weight served
    units: int


def match(weights: Sequence[float], counts: Sequence[int], adjacency: Sequence[Tuple[int, ...]],
          caps: Sequence[int]) -> Match:
    """Serve ``counts[i]`` units of item ``i`` (``weights`` non-increasing) from groups with
    ``caps[g]`` free units, item ``i`` only from the groups in ``adjacency[i]``."""
    n_groups = len(caps)
    used = [0] * n_groups
    flow: List[Dict[int, int]] = [dict() for _ in counts]
    holders: List[Dict[int, int]] = [dict() for _ in range(n_groups)]  # group -> item -> units
    served = [0] * len(counts)

    def push(item: int, group: int, n: int) -> None:
        flow[item][group] = flow[item].get(group, 0) + n
        holders[group][item] = holders[group].get(item, 0) + n
        if flow[item][group] == 0:
            del flow[item][group]
            del holders[group][item]

    for i, need in enumerate(counts):
        # Direct first: free units in the item's own groups, no rerouting needed.
        for g in adjacency[i]:
            if need <= 0:
                break
            spare = caps[g] - used[g]
            if spare > 0:
                n = min(spare, need)
                push(i, g, n)
                used[g] += n
                need -= n
        while need > 0:
            path = _augmenting_path(i, adjacency, caps, used, holders)
            if path is None:
                break
            # path: [(item, group), (item, group), ...]: item k moves into group k; each
            # later item leaves the group the earlier one enters.
            bottleneck = need
            end = path[-1][1]
            bottleneck = min(bottleneck, caps[end] - used[end])
            for (prev_item, group), (item, _) in zip(path, path[1:]):
                bottleneck = min(bottleneck, holders[group].get(item, 0))
            for k, (item, group) in enumerate(path):
                push(item, group, bottleneck)
                if k + 1 < len(path):
                    push(path[k + 1][0], group, -bottleneck)
            used[end] += bottleneck
            need -= bottleneck
        served[i] = counts[i] - need
    weight = sum(w * s for w, s in zip(weights, served))
    return Match(served=served, used=used, flow=flow, weight=weight, units=sum(served))


def _augmenting_path(start: int, adjacency: Sequence[Tuple[int, ...]], caps: Sequence[int],
                     used: Sequence[int], holders: Sequence[Dict[int, int]]
                     ) -> Optional[List[Tuple[int, int]]]:
    """BFS: item -> group; a full group -> an item holding units there -> its other groups."""
    parent: Dict[Tuple[str, int], Tuple[str, int]] = {}
    seen_items = {start}
    seen_groups: Set[int] = set()
    queue = deque([start])
    while queue:
        item = queue.popleft()
        for g in adjacency[item]:
            if g in seen_groups:
                continue
            seen_groups.add(g)
            parent[("g", g)] = ("i", item)
            if caps[g] - used[g] > 0:
                return _walk_back(parent, g)
            for other, units in sorted(holders[g].items()):
                if units > 0 and other not in seen_items:
                    seen_items.add(other)
                    parent[("i", other)] = ("g", g)
                    queue.append(other)
    return None


def _walk_back(parent: Mapping[Tuple[str, int], Tuple[str, int]],
               group: int) -> List[Tuple[int, int]]:
    out: List[Tuple[int, int]] = []
    node = ("g", group)
    while node in parent:
        item = parent[node]
        out.append((item[1], node[1]))
        if item not in parent:
            break
        node = parent[item]
    out.reverse()
    return out
