"""memdistill.engine.steps._C: the optional compiled extension (csrc/), built with MEMDISTILL_BUILD_EXT=1.

It has no Python attributes: importing it registers the torch custom ops (CPU kernels, and CUDA
kernels in a CUDA build)::

    torch.ops.memdistill.mlp_value_and_grad(theta: Tensor, x: Tensor, y: Tensor,
                                            sizes: list[int]) -> tuple[Tensor, Tensor]
    torch.ops.memdistill.mlp_reverse(theta: Tensor, x: Tensor, y: Tensor, w: Tensor,
                                     sizes: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]

Their contract, typed wrappers, fake kernels and the pure-PyTorch fallback: memdistill.ops.
"""
