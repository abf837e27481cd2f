"""Best-of-N selection (paper Sec. 4.2, App. C.4): keep the candidate with the highest reward."""

from __future__ import annotations

import math
from collections.abc import Sequence


def best_index(scores: Sequence[float | None]) -> int | None:
    """Index of the highest score among one prompt's candidates; None when every candidate abstained.

    Abstentions (None) never win. Ties go to the lowest index (the first candidate sampled), so a selection does
    not depend on floating-point noise in equal scores' order. NaN is an error: a reward must abstain with None.
    """
    best: int | None = None
    for i, s in enumerate(scores):
        if s is None:
            continue
        if math.isnan(s):
            raise ValueError(f"scores[{i}] is NaN; a reward abstains with None")
        if best is None or s > scores[best]:
            best = i
    return best
