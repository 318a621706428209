"""Whether values read from a model file are finite: the frontends' and the runtime's weight checks."""
from __future__ import annotations

import numpy as np


def all_finite(values) -> bool:
    """Whether every element of `values` (a torch tensor or a numpy array) is finite. A sum is
    finite only if every element is (an Inf or a NaN makes every partial sum holding it Inf or
    NaN), so one reduction clears a finite tensor, ~20x faster than the elementwise test on a
    float32 weight; only a non-finite sum (a NaN or an Inf, or finite values whose sum overflows)
    takes the elementwise test."""
    if isinstance(values, np.ndarray):
        with np.errstate(invalid="ignore", over="ignore"):      # Inf - Inf is the NaN this looks for
            return bool(np.isfinite(values.sum(dtype=np.float64)) or np.isfinite(values).all())
    import torch
    values = values.detach()
    return bool(torch.isfinite(values.sum(dtype=torch.float32)) or torch.isfinite(values).all())
