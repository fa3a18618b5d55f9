"""Energy per operation, as data. Users add their own with a YAML/TOML/JSON file.

Each profile: ``ac_pj`` (one synaptic accumulate: a spike times one fan-out
target), ``mac_pj`` (one multiply-accumulate of the SNN's non-binary input
layer), ``ann_mac_pj`` (one MAC of the ANN baseline; default ``mac_pj``) and
``source``. A profile whose ``ac_pj`` is ``None`` has no published figure we
could verify; selecting it is an error that says how to supply one.
See docs/hwsim.md for the provenance of every number.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import ConfigError
from ..mapping_file import read_mapping_file


@dataclass(frozen=True)
class EnergyProfile:
    name: str
    ac_pj: float | None
    mac_pj: float
    ann_mac_pj: float | None = None
    source: str = ""

    @property
    def ann_mac(self) -> float:
        return self.mac_pj if self.ann_mac_pj is None else self.ann_mac_pj

    def to_dict(self) -> dict:
        return dict(_fields_of(self))  # values are immutable: a shallow copy is the caller's own


@functools.lru_cache(maxsize=64)
def _fields_of(profile: EnergyProfile) -> dict:
    """A profile's fields, once per value (flat: asdict's deep copy is slow; every report
    carries its profile, and next to a small network's inference this counts)."""
    return {f.name: getattr(profile, f.name) for f in fields(profile)}


_HOROWITZ = ("M. Horowitz, 'Computing's energy problem (and what we can do about it)', "
             "ISSCC 2014, 45 nm at 0.9 V")

_SENECA = ("as tabulated in G. Tang et al., 'SENECA: building a fully digital neuromorphic "
           "processor', Front. Neurosci. 17:1187252, 2023, Table 3 (which notes that the energy per "
           "synaptic operation varies by application: a figure for high-level comparison); we could "
           "not read the primary table here")
_NO_MAC = ("The chip has no MAC unit: the direct-encoded input layer is charged off-chip at 45 nm fp32 "
           "(4.6 pJ/MAC); the ANN baseline is 45 nm fp32")

PROFILES: dict[str, EnergyProfile] = {p.name: p for p in (
    EnergyProfile("45nm-fp32", 0.9, 4.6, 4.6,
                  f"{_HOROWITZ}: fp32 add 0.9 pJ, fp32 mult 3.7 pJ (MAC = 4.6 pJ); "
                  "the figures of ASGL App. B.2 and Dspike Sec. 5.4"),
    EnergyProfile("45nm-int8", 0.03, 0.23, 0.23,
                  f"{_HOROWITZ}: int8 add 0.03 pJ, int8 mult 0.2 pJ (MAC = 0.23 pJ); "
                  "a real accumulator is wider (int32 add: 0.1 pJ)"),
    EnergyProfile("loihi", 23.6, 4.6, 4.6,
                  f"Loihi: 23.6 pJ per synaptic operation, M. Davies et al., 'Loihi: a neuromorphic "
                  f"manycore processor with on-chip learning', IEEE Micro 38(1), 2018, {_SENECA}. "
                  f"{_NO_MAC}"),
    EnergyProfile("truenorth", 2.5, 4.6, 4.6,
                  f"TrueNorth: 2.5 pJ per synaptic operation, F. Akopyan et al., 'TrueNorth: design "
                  f"and tool flow of a 65 mW 1 million neuron programmable neurosynaptic chip', IEEE "
                  f"TCAD 34(10), 2015, {_SENECA}. {_NO_MAC}"),
    EnergyProfile("spinnaker2", 10.0, 4.6, 4.6,
                  f"SpiNNaker 2: 10 pJ per synaptic operation, S. Hoeppner et al., 'The SpiNNaker 2 "
                  f"processing element architecture for hybrid digital neuromorphic computing', "
                  f"arXiv:2103.08392, 2021, {_SENECA}. {_NO_MAC}"),
    EnergyProfile("speck", None, 4.6, 4.6,
                  "Speck: no per-synaptic-operation energy published that we could verify "
                  "(Yao et al., Nat. Commun. 15:4464, 2024, report 0.42 mW resting and 0.70 mW "
                  "total power, not pJ/SOP); measure it on a dev kit and pass --profile-file"),
    EnergyProfile("xylo", None, 4.6, 4.6,
                  "Xylo: no per-synaptic-operation energy published that we could verify (rockpool "
                  "3.1.0's power_cycles_model.py for Xylo Audio 2 / IMU counts clock cycles per step, "
                  "not joules); measure it on a dev kit (rockpool's XyloSamna power monitor) and "
                  "pass --profile-file"),
)}


def read_profile_file(path: str | Path) -> dict[str, EnergyProfile]:
    """Profiles from a YAML/TOML/JSON mapping ``name -> {ac_pj, mac_pj, ann_mac_pj, source}``."""
    p = Path(path)
    data = read_mapping_file(p, "profile name -> fields")
    known = {f.name for f in fields(EnergyProfile)} - {"name"}
    out = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or "mac_pj" not in entry or "ac_pj" not in entry:
            raise ConfigError(f"{p}: profile {name!r} needs ac_pj and mac_pj (pJ per operation)")
        unknown = set(entry) - known
        if unknown:
            raise ConfigError(f"{p}: profile {name!r} has unknown field(s) {sorted(unknown)}; "
                              f"known: {sorted(known)}")
        out[str(name)] = EnergyProfile(str(name), **entry)
    return out


def get_profile(name: str, profile_file: str | Path | None = None) -> EnergyProfile:
    """A built-in profile, or one from ``profile_file`` (which may override built-ins)."""
    table = dict(PROFILES)
    if profile_file is not None:
        table.update(read_profile_file(profile_file))
    if name not in table:
        raise ConfigError(f"unknown energy profile {name!r}; choose one of {sorted(table)} "
                          "or define it in a --profile-file")
    prof = table[name]
    if prof.ac_pj is None:
        raise ConfigError(f"energy profile {name!r} has no verified pJ per synaptic operation: "
                          f"{prof.source}")
    return prof
