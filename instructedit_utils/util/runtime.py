"""The process's torch settings: threads and seeds."""
from __future__ import annotations

import random

import numpy as np
import torch


def setup_torch(num_threads: int | None = None, seed: int = 0) -> None:
    """Set torch's intra-op threads (explicitly: contention on 2 shared cores hurts) and all seeds."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
