"""``intra_op_threads``: a block run with a given number of torch intra-op threads.

Tiny kernels that wake a second thread cost more than they compute (on a loaded CPU, 2.5–12 ms
a kernel): the fused step, the Distiller's outer step and the reproduction run small work on one.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["intra_op_threads"]


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """The block with ``count`` torch intra-op threads, the count restored afterwards, failure
    included (nothing changes when it already is ``count``)."""
    threads = torch.get_num_threads()
    if threads != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if threads != count:
            torch.set_num_threads(threads)
