"""benchmarks/perf_gpu.py in its --cpu-smoke mode (tiny shapes on the CPU): the script
runs every candidate end to end. Needs .venv-bench (bash benchmarks/setup), where
snnTorch and SpikingJelly are installed; skipped without it. The GPU run itself is
part of scripts/gpu-check."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".venv-bench" / "bin" / "python"


@pytest.mark.skipif(not BENCH.exists(), reason="no .venv-bench (bash benchmarks/setup)")
def test_perf_gpu_cpu_smoke(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([str(BENCH), str(ROOT / "benchmarks" / "perf_gpu.py"), "--cpu-smoke",
                           "--json", str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["skipped"] == {} and result["spikingjelly_backend"] == "torch-reference"
    seen = {(r["net"], r["candidate"]) for r in result["rows"]}
    assert seen == {(n, c) for n in ("conv", "resnet19")
                    for c in ("snn2hw", "snn2hw-plain", "snntorch", "spikingjelly")}
    assert all(r["step_ms"] > 0 and r["peak_mib"] is None for r in result["rows"])
    assert "CPU SMOKE RUN" in result["header"]
