"""Running a ``XyloSpec`` in SynSense's bit-accurate simulator (xylosim 0.1.3, ``xylosim.v2``).

xylosim is optional (scripts/setup builds it); it is imported inside the functions here. The
network is built the way rockpool's ``XyloSim.from_specification`` builds it (one
``XyloSynapse(post, 0, w)`` per nonzero weight, sources in order), without rockpool.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from .emulator import XyloRun, XyloSpec


def xylosim_available() -> bool:
    """Whether ``xylosim`` can be imported (without importing it)."""
    return importlib.util.find_spec("xylosim") is not None


def build_layer(spec: XyloSpec) -> tuple:
    """(``xylosim.v2.XyloLayer`` holding ``spec``, the synapse lists it points into).

    The layer keeps raw pointers to the ``XyloSynapse`` objects: the caller must keep the
    second element alive as long as the layer (it segfaults otherwise, measured)."""
    from xylosim.v2 import XyloLayer, XyloSynapse

    def synapses(w: np.ndarray) -> list:
        return [[XyloSynapse(int(post), 0, int(row[post])) for post in np.flatnonzero(row)]
                for row in np.asarray(w, np.int64)]

    H = spec.hidden
    bias_used = spec.bias is not None or spec.bias_out is not None
    zeros_h, zeros_o = [0] * H, [0] * len(spec.threshold_out)
    keep = (synapses(spec.weights_in), synapses(spec.weights_rec), synapses(spec.weights_out))
    layer = XyloLayer(
        synapses_in=keep[0], synapses_rec=keep[1], synapses_out=keep[2],
        aliases=[list(a) for a in spec.aliases] or [[] for _ in range(H)],
        threshold=[int(v) for v in spec.threshold], threshold_out=[int(v) for v in spec.threshold_out],
        has_bias=bias_used,
        bias=[int(v) for v in spec.bias] if spec.bias is not None else zeros_h,
        bias_out=[int(v) for v in spec.bias_out] if spec.bias_out is not None else zeros_o,
        weight_shift_inp=int(spec.weight_shift_in), weight_shift_rec=int(spec.weight_shift_rec),
        weight_shift_out=int(spec.weight_shift_out),
        dash_mem=[int(v) for v in spec.dash_mem], dash_mem_out=[int(v) for v in spec.dash_mem_out],
        dash_syns=[[int(v)] for v in spec.dash_syn], dash_syns_out=[[int(v)] for v in spec.dash_syn_out],
        name="snn2hw")
    return layer, keep


def run_xylosim(spec: XyloSpec, events: np.ndarray) -> XyloRun:
    """Run ``spec`` in xylosim on input events (S, N, Nin), each sample from zero state
    (``reset_all`` between samples); the same record as ``emulator.run`` (no saturation count)."""
    layer, _keep = build_layer(spec)
    S, N, _ = events.shape
    H, O = spec.hidden, len(spec.threshold_out)
    out = XyloRun(np.zeros((S, N, H), np.uint8), np.zeros((S, N, O), np.uint8),
                  np.zeros((S, N, O), np.int64), np.zeros((S, N, O), np.int64))
    raster = np.clip(events, 0, 255).astype(np.int64)
    for n in range(N):
        layer.reset_all()
        out.output_spikes[:, n] = np.asarray(layer.evolve(raster[:, n].tolist()), np.uint8).reshape(S, O)
        out.hidden_spikes[:, n] = np.asarray(layer.rec_recurrent_spikes, np.uint8).reshape(S, H)
        out.v_out[:, n] = np.asarray(layer.rec_v_mem_out, np.int64).reshape(O, S).T
        out.i_out[:, n] = np.asarray(layer.rec_i_syn_out, np.int64).reshape(O, S).T
    return out
