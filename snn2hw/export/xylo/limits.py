"""What each Xylo chip takes, as data, with where every number comes from.

Sources (read in the packages themselves, versions pinned by scripts/setup):

* xylosim 0.1.3, ``src/v2/cpp/XyloIAFNeuron.h`` (SynSense's bit-accurate C++ model of the
  Xylo core, "xylosim.v2"): ``BITS_STATE 16`` (Isyn and Vmem, saturating), ``BITS_WEIGHT 8``
  (``XyloSynapse.weight`` is ``int8_t``), ``v_th`` and ``bias`` ``int16_t``, ``dash_mem`` /
  ``dash_syns`` "should be 4 bits" (0..15), ``MAX_NUM_INP_SPIKES 15`` (input events per channel
  and step), ``MAX_NUM_SPIKES 31`` (spikes per hidden neuron and step), ``MAX_NUM_OUT_SPIKES 1``.
* rockpool 3.1.0, ``devices/xylo/syns61201/xylo_mapper.py`` (Xylo Audio 2): ``mapper(...,
  max_hidden_neurons=1000, max_output_neurons=8)``, the DRC ``le_16_input_channels`` and
  ``le_8_output_channels``; two synapses per neuron (``weights_in (Nin, Nhidden, 2)``).
* rockpool 3.1.0, ``devices/xylo/syns63300/xylo_mapper.py`` (Xylo IMU):
  ``max_hidden_neurons=496, max_output_neurons=16``, ``le_16_input_channels``,
  ``max_synapses_per_neuron(max_syns=1)``; ``syns63300/xylo_samna.py``
  ``config_from_specification`` keeps only the first 128 input-expansion neurons (IEN) and
  the last 128 output-expansion neurons (OEN).
* Bit-shift decays: ``v <- v - max(v >> dash, sign(v))`` (xylosim ``decay``), so a leak
  ``lam = 1 - 2^-dash``; rockpool maps a time constant with ``dash = round(log2(tau / dt))``
  (``nn/modules/torch/lif_bitshift_torch.py``, ``calc_bitshift_decay``). ``dash = 0`` clears
  the state every step (no memory).

Rockpool's mappers check no fan-in or fan-out limit (the weight matrices are dense); the
hardware's own rules are in samna's ``validate_configuration``, which this project never
installs (PyPI's samna is a stub): a configuration is validated there, on the user's side.
"""

from __future__ import annotations

from dataclasses import dataclass

STATE_BITS = 16                      # Isyn, Vmem (xylosim BITS_STATE), saturating
STATE_MAX = (1 << (STATE_BITS - 1)) - 1
STATE_MIN = -(1 << (STATE_BITS - 1))
WEIGHT_MAX = 127                     # int8 weights (xylosim BITS_WEIGHT 8), symmetric use
THRESHOLD_MAX = STATE_MAX            # int16 v_th
DASH_MAX = 15                        # 4-bit bit-shift decays
MAX_INPUT_EVENTS = 15                # input events per channel and step (MAX_NUM_INP_SPIKES)
MAX_HIDDEN_SPIKES = 31               # spikes per hidden neuron and step (MAX_NUM_SPIKES)
MAX_OUTPUT_SPIKES = 1                # spikes per output neuron and step (MAX_NUM_OUT_SPIKES)


@dataclass(frozen=True)
class XyloLimits:
    """One Xylo chip's capacity (module docstring for the sources)."""

    name: str
    description: str
    input_channels: int
    hidden_neurons: int
    output_neurons: int
    synapses_per_neuron: int
    input_expansion: int | None = None    # hidden neurons input weights may reach (first IEN)
    output_expansion: int | None = None   # hidden neurons output weights may read (last OEN)

    def refusals(self, inputs: int, hidden: int, outputs: int, reached_by_input: int,
                 read_by_output: int) -> list[str]:
        """Why a network of these sizes does not fit (empty: it fits). ``reached_by_input``
        is the highest hidden index + 1 that an input weight reaches; ``read_by_output`` the
        number of hidden neurons, counted from the last, that the output weights read."""
        out = []
        if inputs > self.input_channels:
            out.append(f"{inputs} input channels > {self.input_channels}")
        if hidden > self.hidden_neurons:
            out.append(f"{hidden} hidden neurons > {self.hidden_neurons}")
        if outputs > self.output_neurons:
            out.append(f"{outputs} output neurons (classes) > {self.output_neurons}")
        if self.input_expansion is not None and reached_by_input > self.input_expansion:
            out.append(f"input weights reach {reached_by_input} hidden neurons > {self.input_expansion} (IEN)")
        if self.output_expansion is not None and read_by_output > self.output_expansion:
            out.append(f"output weights read {read_by_output} hidden neurons > {self.output_expansion} (OEN)")
        return out


# chip name -> limits, in the order an automatic choice tries them
CHIPS: dict[str, XyloLimits] = {c.name: c for c in (
    XyloLimits("xylo-audio2", "Xylo Audio 2 (SYNS61201): 16 inputs, 1000 hidden, 8 outputs",
               input_channels=16, hidden_neurons=1000, output_neurons=8, synapses_per_neuron=2),
    XyloLimits("xylo-imu", "Xylo IMU (SYNS63300): 16 inputs, 496 hidden, 16 outputs",
               input_channels=16, hidden_neurons=496, output_neurons=16, synapses_per_neuron=1,
               input_expansion=128, output_expansion=128),
)}
