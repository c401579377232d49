"""Statistics shared by the sampling tests."""

from __future__ import annotations

import math
from collections import Counter


def chi2_pvalue(a: Counter, b: Counter) -> float:
    """Two-sample chi-square test of equal distributions (Wilson-Hilferty p-value).

    Tokens drawn fewer than 20 times in both samples together share one bin, so that every
    cell is large enough for the chi-square approximation.
    """
    na, nb = sum(a.values()), sum(b.values())
    cells: list[tuple[int, int]] = []
    rare = [0, 0]
    for c in set(a) | set(b):
        x, y = a.get(c, 0), b.get(c, 0)
        if x + y < 20:
            rare[0] += x
            rare[1] += y
        else:
            cells.append((x, y))
    if sum(rare):
        cells.append((rare[0], rare[1]))
    stat = sum((x * math.sqrt(nb / na) - y * math.sqrt(na / nb)) ** 2 / (x + y) for x, y in cells)
    k = len(cells) - 1
    if k <= 0:
        return 1.0
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))
