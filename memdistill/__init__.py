"""memdistill: exact hypergradients through long unrolled training loops with bounded memory.

The public surface lives here; the implementation is in the submodules.
"""
