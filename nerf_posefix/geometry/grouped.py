"""Statistics of values grouped by an integer label (per image, per camera), batched with numpy.

Every function takes ``values [M]`` and ``groups [M]`` (integers in ``[0, n)``, any order) and returns
``[n]``, NaN for a group without (non-NaN) values. One sort for all groups, so ``M`` observations of
``n`` images cost ``O(M log M)``, not ``n`` passes over ``M``.
"""

from __future__ import annotations

import numpy as np


def _sorted_by_group(values: np.ndarray, groups: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-NaN ``values`` sorted by (group, value), and ``start [n], count [n]`` of each group's run."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    groups = np.asarray(groups, dtype=np.int64).reshape(-1)
    if values.shape != groups.shape:
        raise ValueError(f"{values.size} values for {groups.size} group labels")
    keep = ~np.isnan(values)
    values, groups = values[keep], groups[keep]
    order = np.lexsort((values, groups))
    values, groups = values[order], groups[order]
    bounds = np.searchsorted(groups, np.arange(n + 1))
    return values, bounds[:-1], np.diff(bounds)


def grouped_count(values: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """``[n]`` number of non-NaN values per group (integers)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return np.bincount(np.asarray(groups, dtype=np.int64).reshape(-1)[~np.isnan(values)], minlength=n)[:n]


def grouped_median(values: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """``[n]`` median of the non-NaN values of each group (the mean of the two middle ones for an even count,
    as ``np.median``)."""
    vals, start, count = _sorted_by_group(values, groups, n)
    out = np.full(n, np.nan)
    has = count > 0
    out[has] = 0.5 * (vals[start[has] + (count[has] - 1) // 2] + vals[start[has] + count[has] // 2])
    return out


def grouped_sorted_element(values: np.ndarray, groups: np.ndarray, n: int, q: float) -> np.ndarray:
    """``[n]`` per group the element at index ``int(q · (count - 1))`` of its sorted non-NaN values (the
    homography paper's reference-code quantile, :func:`nerf_posefix.geometry.homography.depth_bounds_from_points`),
    ``0 <= q <= 1``."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"need 0 <= q <= 1, got {q}")
    vals, start, count = _sorted_by_group(values, groups, n)
    out = np.full(n, np.nan)
    has = count > 0
    out[has] = vals[start[has] + (q * (count[has] - 1)).astype(np.int64)]
    return out


def linked_groups(item_row: np.ndarray, point_row: np.ndarray, n: int, p: int, first_key: np.ndarray | None = None) -> np.ndarray:
    """``[n]`` group of each of ``n`` items (images, cameras) linked by shared points: the connected components of
    the graph of observations ``item_row [M]`` (in ``[0, n)``) - ``point_row [M]`` (in ``[0, p)``), numbered 0 for
    the largest, then by size; ties: the smallest ``first_key [n]`` in the group first (default: the item index).
    An item without observations is a group of its own."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    item_row = np.asarray(item_row, dtype=np.int64).reshape(-1)
    point_row = np.asarray(point_row, dtype=np.int64).reshape(-1)
    key = np.arange(n, dtype=np.int64) if first_key is None else np.asarray(first_key, dtype=np.int64).reshape(-1)
    graph = coo_matrix((np.ones(item_row.size), (item_row, n + point_row)), shape=(n + p, n + p))
    _, label = connected_components(graph, directed=False)
    label = label[:n]  # [n] component of each item
    size = np.bincount(label)
    first = np.full(size.size, np.iinfo(np.int64).max)
    np.minimum.at(first, label, key)
    used = np.unique(label)
    ordered = used[np.lexsort((first[used], -size[used]))]
    rank = np.empty(size.size, dtype=np.int64)
    rank[ordered] = np.arange(ordered.size)
    return rank[label]
