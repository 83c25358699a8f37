"""Image architectures: LeNet (Wang et al. 2018) and the ConvNet of the distillation literature.

Like :func:`~memdistill.models.mlp.mlp`, ``lenet(...)`` and ``convnet(...)`` return frozen,
zero-argument factories; every call builds a fresh ``nn.Sequential`` taking images
[N, C, H, W] (``in_shape = (C, H, W)``) and returning logits [N, out] with
``out = 1`` when ``classes == 2`` (one logit, BCE) and ``out = classes`` otherwise.

Initialisation, drawn from the global torch RNG (``fresh_model(arch, seed)`` seeds it):

- LeNet: Xavier-uniform weights and zero biases, as the paper's MLPs (and Wang et al.'s
  default ``--init xavier``).
- ConvNet: PyTorch's default init (Kaiming-uniform with ``a = √5`` for convolutions and the
  head, norm scales 1 and shifts 0), as the DC/DSA/MTT code that defines it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["CONVNET_DEFAULTS", "NORMS", "ConvNet", "LeNet", "convnet", "lenet", "out_width"]

NORMS = ("instance", "batch", "layer", "none")
CONVNET_DEFAULTS = {"depth": 3, "width": 128, "norm": "instance"}


def out_width(classes: int) -> int:
    """Output width for ``classes`` classes: 1 logit for 2 classes, else one per class."""
    return 1 if classes == 2 else classes


def _check_shape(arch: str, in_shape: tuple[int, ...], classes: int) -> tuple[int, int, int]:
    """(C, H, W) of a valid image shape; a ValueError naming ``arch`` otherwise."""
    shape = tuple(in_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ValueError(f"{arch}: in_shape must be (channels, height, width) of positive ints, got {in_shape!r}")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 2:
        raise ValueError(f"{arch}: classes must be an integer >= 2, got {classes!r}")
    return shape  # type: ignore[return-value]


@dataclass(frozen=True)
class LeNet:
    """Factory of Wang et al. (2018)'s LeNet for images of shape ``in_shape`` = (C, H, W).

    conv5×5(6, pad 2) → ReLU → maxpool2 → conv5×5(16, pad 2) → ReLU → maxpool2 →
    fc120 → ReLU → fc84 → ReLU → fc(out): H → H → H//2 → H//2 → H//4 (28 → 7, 32 → 8, 8 → 2).
    """

    in_shape: tuple[int, int, int]
    classes: int

    @property
    def name(self) -> str:
        return "lenet"

    def __call__(self) -> nn.Sequential:
        """A new LeNet, Xavier-uniform weights, zero biases."""
        channels, height, width = self.in_shape
        model = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(16 * (height // 4) * (width // 4), 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, out_width(self.classes)),
        )
        for layer in model:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        return model


def lenet(in_shape: tuple[int, ...] = (1, 28, 28), classes: int = 10) -> LeNet:
    """A factory of Wang et al. (2018)'s LeNet (padding 2 on both convolutions).

    Args:
      in_shape: (channels, height, width); height and width >= 4 (two 2×2 max-pools).
      classes: number of classes C >= 2; the output width is 1 (a logit) for C = 2, else C.

    Returns:
      A :class:`LeNet` factory; ``lenet()()`` is a fresh ``nn.Sequential``.

    Examples:
      >>> import torch
      >>> lenet((1, 8, 8), classes=3)()(torch.zeros(5, 1, 8, 8)).shape
      torch.Size([5, 3])

    References:
      Wang, Zhu, Torralba & Efros (2018), Dataset Distillation; LeCun et al. (1998).
    """
    shape = _check_shape("lenet", in_shape, classes)
    if shape[1] < 4 or shape[2] < 4:
        raise ValueError(f"lenet: images must be at least 4x4 (two 2x2 max-pools), got in_shape {list(shape)}")
    return LeNet(shape, classes)


def _norm(norm: str, width: int) -> list[nn.Module]:
    if norm == "instance":  # instance norm with affine parameters, as the DC/DSA/MTT code
        return [nn.GroupNorm(width, width, affine=True)]
    if norm == "layer":
        return [nn.GroupNorm(1, width)]
    if norm == "batch":
        return [nn.BatchNorm2d(width)]
    return []


@dataclass(frozen=True)
class ConvNet:
    """Factory of the ConvNet of the distillation literature (DC, DSA, DM, MTT).

    ``depth`` blocks of conv3×3(width, pad 1) → norm → ReLU → avgpool2, then a linear head on
    the width · (H // 2^depth) · (W // 2^depth) features.
    """

    in_shape: tuple[int, int, int]
    classes: int
    depth: int = 3
    width: int = 128
    norm: str = "instance"

    @property
    def name(self) -> str:
        """``"convnet"`` (defaults), ``"convnet-D"`` (only the depth differs), else
        ``"convnet[depth=D,width=W,norm=N]"``; :func:`~memdistill.models.registry.resolve_arch`
        reads all three."""
        if (self.width, self.norm) != (CONVNET_DEFAULTS["width"], CONVNET_DEFAULTS["norm"]):
            return f"convnet[depth={self.depth},width={self.width},norm={self.norm}]"
        return "convnet" if self.depth == CONVNET_DEFAULTS["depth"] else f"convnet-{self.depth}"

    def __call__(self) -> nn.Sequential:
        """A new ConvNet with PyTorch's default initialisation."""
        channels, height, width = self.in_shape
        layers: list[nn.Module] = []
        for _ in range(self.depth):
            layers += [nn.Conv2d(channels, self.width, 3, padding=1), *_norm(self.norm, self.width),
                       nn.ReLU(), nn.AvgPool2d(2)]
            channels, height, width = self.width, height // 2, width // 2
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * height * width, out_width(self.classes)))


def convnet(in_shape: tuple[int, ...] = (3, 32, 32), classes: int = 10, depth: int = 3, width: int = 128,
            norm: str = "instance") -> ConvNet:
    """A factory of the ConvNet used by DC/DSA/DM/MTT (Zhao et al. 2021; Cazenavette et al. 2022).

    Args:
      in_shape: (channels, height, width); each side must survive ``depth`` 2×2 average pools
        (side // 2^depth >= 1).
      classes: number of classes C >= 2; the output width is 1 (a logit) for C = 2, else C.
      depth: number of conv blocks, >= 1.
      width: channels of every conv layer, >= 1.
      norm: "instance" (``GroupNorm(width, width)``, affine), "batch" (``BatchNorm2d``; training
        mode uses batch statistics), "layer" (``GroupNorm(1, width)``) or "none".

    Returns:
      A :class:`ConvNet` factory; ``convnet()()`` is a fresh ``nn.Sequential``.

    Examples:
      >>> import torch
      >>> convnet((3, 8, 8), classes=2, depth=2, width=8)()(torch.zeros(5, 3, 8, 8)).shape
      torch.Size([5, 1])

    References:
      Gidaris & Komodakis (2018); Zhao, Mopuri & Bilen (2021), Dataset Condensation with Gradient
      Matching; Cazenavette et al. (2022), Dataset Distillation by Matching Training Trajectories.
    """
    shape = _check_shape("convnet", in_shape, classes)
    for arg, value in [("depth", depth), ("width", width)]:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"convnet: {arg} must be an integer >= 1, got {value!r}")
    if norm not in NORMS:
        raise ValueError(f"convnet: unknown norm {norm!r}; it needs to be one of {list(NORMS)}")
    if min(shape[1:]) >> depth < 1:
        raise ValueError(f"convnet: depth {depth} pools images of shape {list(shape)} below 1x1 "
                         f"(each block halves the side); use depth <= {min(shape[1:]).bit_length() - 1}")
    return ConvNet(shape, classes, depth, width, norm)
