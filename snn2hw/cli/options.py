"""Options several verbs share (not a verb itself)."""

from __future__ import annotations

import argparse

from ..devices import DEVICE_CHOICES


def add_device_option(p: argparse.ArgumentParser) -> None:
    """``--device``: where the network runs (``devices.resolve_device``)."""
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help=f"{', '.join(DEVICE_CHOICES)} (default auto: this process's CUDA GPU when there "
                        "is one, else the CPU)")
