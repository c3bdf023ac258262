"""Point labels that never overlap each other, any marker or a legend; coincident points spread apart.

Scatter plots of 28 datasets crowd where corpora have similar sizes (FEVER, Climate-FEVER, HotpotQA and
DBPedia all hold ≈ 5M passages). :func:`spread_coincident` moves markers that would hide each other
sideways by one marker width (the CSV keeps the exact values); :func:`place_labels` tries positions
around each point, nearest first, and keeps the first whose text box is free of the boxes placed so far,
of every marker and of the legend, inside the axes; a label placed away from its point gets a thin
leader line. Everything is measured in display coordinates with the figure's own renderer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RADII = (3, 9, 16, 26, 38, 52, 70)  # points from the marker edge
DIRECTIONS = 16


def marker_boxes(ax) -> list:
    """Display-space boxes of every scatter marker in ``ax``."""
    from matplotlib.transforms import Bbox

    boxes = []
    for coll in ax.collections:
        sizes = coll.get_sizes()
        if not len(sizes):
            continue
        r = math.sqrt(float(sizes[0])) / 2 * ax.figure.dpi / 72
        for x, y in coll.get_offset_transform().transform(coll.get_offsets()):
            boxes.append(Bbox.from_extents(x - r, y - r, x + r, y + r))
    return boxes


def spread_coincident(ax) -> None:
    """Move markers of ``ax`` that overlap another marker sideways, centred on their shared position."""
    pts = [
        (c, i, xy)
        for c in ax.collections
        for i, xy in enumerate(c.get_offset_transform().transform(c.get_offsets()))
    ]
    if not pts:
        return
    diameter = 2 * max(math.sqrt(float(c.get_sizes()[0])) / 2 * ax.figure.dpi / 72 for c, _, _ in pts)
    groups: list[list[int]] = []
    for k, (_, _, xy) in enumerate(pts):
        near = next((g for g in groups if any(np.hypot(*(pts[j][2] - xy)) < diameter for j in g)), None)
        if near is None:
            groups.append([k])
        else:
            near.append(k)
    moved = {id(c): c.get_offset_transform().transform(c.get_offsets()) for c, _, _ in pts}
    for g in groups:
        if len(g) > 1:
            cx = float(np.mean([pts[k][2][0] for k in g]))
            for rank, k in enumerate(sorted(g, key=lambda k: pts[k][2][1])):
                c, i, xy = pts[k]
                moved[id(c)][i] = (cx + (rank - (len(g) - 1) / 2) * diameter * 1.1, xy[1])
    for c in {id(c): c for c, _, _ in pts}.values():
        c.set_offsets(c.get_offset_transform().inverted().transform(moved[id(c)]))


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _candidates() -> list[tuple[float, float]]:
    out = []
    for r in RADII:
        for k in range(DIRECTIONS):
            a = 2 * math.pi * k / DIRECTIONS + math.pi / 4  # up-right first
            out.append((r * math.cos(a), r * math.sin(a)))
    return out


def place_labels(
    ax, xy: Sequence[tuple[float, float]], texts: Sequence[str], colors: Sequence = (), avoid: Sequence = (),
    fontsize: float = 7,
) -> list:  # fmt: skip
    """Annotate data points ``xy`` with ``texts`` (in ``colors``) without overlaps; returns the annotations."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = [*marker_boxes(ax), *avoid]
    marker_radius = max(
        (math.sqrt(float(c.get_sizes()[0])) / 2 for c in ax.collections if len(c.get_sizes())), default=3
    )
    placed = []
    colors = list(colors) or ["black"] * len(texts)
    for (x, y), text, color in zip(xy, texts, colors, strict=True):
        best = None
        for dx, dy in _candidates():
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, color=color,
                              ha="left" if dx > 0.5 else "right" if dx < -0.5 else "center",
                              va="bottom" if dy > 0.5 else "top" if dy < -0.5 else "center")  # fmt: skip
            box = ann.get_window_extent(renderer).expanded(1.04, 1.08)
            cost = sum(_overlap(box, t) for t in taken) + box.width * box.height - _overlap(box, frame)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, box, math.hypot(dx, dy))
            else:
                ann.remove()
            if cost == 0:
                break
        _, ann, box, dist = best
        if dist > RADII[1] + 1:  # away from its point: a leader line says whose label it is
            ann.remove()
            ann = ax.annotate(text, (x, y), xytext=ann.xyann, textcoords="offset points", fontsize=fontsize,
                              color=color, ha=ann.get_ha(), va=ann.get_va(),
                              arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5", "shrinkA": 0,
                                          "shrinkB": marker_radius})  # fmt: skip
        taken.append(box)
        placed.append(ann)
    return placed
