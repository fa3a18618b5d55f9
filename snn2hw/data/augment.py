"""Image augmentation as the CIFAR papers train with: random crop after zero
padding, horizontal flip, cutout (DeVries & Taylor 2017).

Deterministic by construction: the random choices of a training step come from a
generator seeded by (run seed, epoch, step) alone (``step_generator``), drawn for
the whole global batch, so they do not depend on which worker process makes the
batch, on the number of ranks that share it, or on a resume in between.

The samples are already normalised (``data.datasets``), so padding and cutout
write 0, the training set's per-channel mean (the papers pad the raw image with
black before normalising; the difference is the colour of a 4-pixel border).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError

# name -> (field, value when given without "=N"): pad 4 and a 16-pixel square as the
# CIFAR-10 recipes use
AUGMENTATIONS = {"crop": ("crop_pad", 4), "flip": ("flip", 1), "cutout": ("cutout", 16)}


@dataclass(frozen=True)
class Augment:
    """Which augmentations run: crop with ``crop_pad`` pixels of padding (0: off),
    ``flip`` left-right with probability 1/2, ``cutout`` a square of that side (0: off)."""

    crop_pad: int = 0
    flip: bool = False
    cutout: int = 0

    @classmethod
    def parse(cls, text: str | None) -> "Augment | None":
        """``"crop,flip,cutout"`` (defaults pad 4, square 16) or with sizes ``"crop=2,cutout=8"``;
        None, ``""`` or ``"none"`` is no augmentation."""
        if text is None or str(text).strip().lower() in ("", "none"):
            return None
        values: dict[str, int] = {}
        for item in str(text).split(","):
            name, sep, size = item.strip().lower().partition("=")
            if name not in AUGMENTATIONS:
                raise ConfigError(f"augment {name!r} is unknown; give a comma list of "
                                  f"{', '.join(AUGMENTATIONS)} (optionally crop=PAD, cutout=SIZE)")
            field_name, default = AUGMENTATIONS[name]
            try:
                value = int(size) if sep else default
            except ValueError:
                raise ConfigError(f"augment {item.strip()!r}: the size must be an integer") from None
            if value < 0 or (name == "flip" and value not in (0, 1)):
                raise ConfigError(f"augment {item.strip()!r}: sizes are >= 0 (flip takes no size)")
            values[field_name] = value
        return cls(**{k: (bool(v) if k == "flip" else v) for k, v in values.items()})

    def describe(self) -> str:
        parts = ([f"crop={self.crop_pad}"] if self.crop_pad else []) + (["flip"] if self.flip else []) \
            + ([f"cutout={self.cutout}"] if self.cutout else [])
        return ",".join(parts) or "none"


@dataclass
class Draw:
    """The random choices for n samples: crop offsets (n, 2) in [0, 2 pad], flips (n,),
    cutout centres (n, 2) in [0, H) x [0, W); None where that augmentation is off."""

    offsets: Tensor | None
    flips: Tensor | None
    centres: Tensor | None

    def select(self, positions: Tensor) -> "Draw":
        """The choices of the samples at ``positions`` (this rank's part of the batch)."""
        return Draw(*(None if t is None else t[positions] for t in (self.offsets, self.flips, self.centres)))


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The generator of one training step's augmentation: a function of (seed, epoch, step) only."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + step) % (1 << 63))


def check_image_shape(augment: Augment | None, sample_shape: tuple[int, ...], temporal: bool) -> None:
    """Refuse augmentation of samples that are not static images (C, H, W)."""
    if augment is None:
        return
    if temporal or len(sample_shape) != 3:
        raise ConfigError(f"--augment {augment.describe()} needs static image samples (C, H, W); this "
                          f"dataset's samples are {'event sequences' if temporal else tuple(sample_shape)}: "
                          "drop --augment")


def draw(augment: Augment, n: int, height: int, width: int, generator: torch.Generator) -> Draw:
    """Draw the choices for n samples, in a fixed order: offsets, flips, centres."""
    offsets = flips = centres = None
    if augment.crop_pad:
        offsets = torch.randint(0, 2 * augment.crop_pad + 1, (n, 2), generator=generator)
    if augment.flip:
        flips = torch.rand(n, generator=generator) < 0.5
    if augment.cutout:
        centres = torch.stack([torch.randint(0, height, (n,), generator=generator),
                               torch.randint(0, width, (n,), generator=generator)], 1)
    return Draw(offsets, flips, centres)


def apply(augment: Augment, x: Tensor, choice: Draw) -> Tensor:
    """Images ``x`` (n, C, H, W) augmented as ``choice`` says: crop, then flip, then cutout.

    Crop: sample i is ``pad(x_i)[:, a:a+H, b:b+W]`` with ``(a, b) = offsets[i]``, zero
    padding of ``crop_pad`` on every side. Flip: columns reversed where ``flips[i]``.
    Cutout: rows ``[cy - s//2, cy + s - s//2)`` and the same columns around ``(cy, cx) =
    centres[i]``, clipped to the image, set to 0.
    """
    n, _, h, w = x.shape
    if choice.offsets is not None:
        p = augment.crop_pad
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        rows = (choice.offsets[:, 0:1] + torch.arange(h)).view(n, 1, h, 1)
        cols = (choice.offsets[:, 1:2] + torch.arange(w)).view(n, 1, 1, w)
        x = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(x.shape[1]).view(1, -1, 1, 1), rows, cols]
    if choice.flips is not None:
        x = torch.where(choice.flips.view(n, 1, 1, 1), x.flip(-1), x)
    if choice.centres is not None:
        s = augment.cutout
        r = torch.arange(h).view(1, h, 1) - choice.centres[:, 0].view(n, 1, 1)
        c = torch.arange(w).view(1, 1, w) - choice.centres[:, 1].view(n, 1, 1)
        inside = (r >= -(s // 2)) & (r < s - s // 2) & (c >= -(s // 2)) & (c < s - s // 2)
        x = x.masked_fill(inside.unsqueeze(1), 0.0)
    return x
