"""The functional core: neuron step, surrogate shapes, Heaviside, layers."""

from .neuron import LIFParams, LIFState, lif_sequence, lif_step
from .surrogate import SURROGATES, heaviside, make_surrogate, spike

__all__ = ["LIFParams", "LIFState", "lif_sequence", "lif_step", "SURROGATES",
           "heaviside", "make_surrogate", "spike"]
