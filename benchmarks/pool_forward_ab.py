"""``_kernel.pool_forward`` (and ``asgl_pool_forward``) alone, kernel libraries A/B.

    git show REV:snn2hw/core/_lif_kernel.c > /tmp/old.c
    gcc -O3 -fPIC -shared -fopenmp -ffp-contract=off -fno-fast-math -o /tmp/old.so /tmp/old.c
    .venv/bin/python benchmarks/pool_forward_ab.py 4 old=/tmp/old.so new=snn2hw/core/_lif_kernel.so

Each library runs in its own process, the processes alternating over ROUNDS rounds (two
libraries in one process share their target_clones dispatch: the first loaded answers
for both). CPU clock (thread_time) of each call, one thread, 5 calls per process; the
table gives ns per neuron-step, min / median over all calls. Shapes: the conv net on
mnist1d (batch 64 x 32 channels, lengths 40, 20, 10) and Dspike's FDG copies (256 x 128).
``_kernel.load`` refuses a library older than ``_lif_kernel.c``: build (or touch) it after
the checkout.
"""
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

CASES = [  # (label, T, planes, C, W, keep_x, mode, asgl)
    ("sg train 64x32 L40 (x kept)", 4, 64 * 32, 32, 40, True, 2, False),
    ("sg train 64x32 L20 (x kept)", 4, 64 * 32, 32, 20, True, 2, False),
    ("sg train 64x32 L10 (x kept)", 4, 64 * 32, 32, 10, True, 2, False),
    ("FDG 256x128 L20 (no x)", 4, 256 * 128, 128, 20, False, 2, False),
    ("FDG 256x128 L10 (no x)", 4, 256 * 128, 128, 10, False, 2, False),
    ("inference c=z 64x32 L20", 4, 64 * 32, 32, 20, False, 0, False),
    ("asgl p=1 64x32 L20 (x kept)", 4, 64 * 32, 32, 20, True, 2, True),
    ("T=16 sg train 64x32 L20", 16, 64 * 32, 32, 20, True, 2, False),
    ("T=16 sg train 64x32 L40", 16, 64 * 32, 32, 40, True, 2, False),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def child(lib, reps):
    from snn2hw.core import _kernel as K
    torch.set_num_threads(1)
    K._lib, K._tried = K.load(Path(lib)), True
    assert K._lib is not None
    g = torch.Generator().manual_seed(0)
    out = {}
    for label, T, P, C, W, keep_x, mode, asgl in CASES:
        lay = K.PlaneLayout(T, P, C, 1, W, 1, 2)
        z = torch.randn(T, P * W, generator=g) * 1.5 + 0.3
        coef = torch.randn(C, 4, generator=g) * 0.5 + 1
        def call():
            if asgl:
                return K.asgl_pool_forward(z, coef, mode, lay, 2.0, 0.0, 0.9, 1.0, True, 0.7, 1.0, None, keep_x)
            return K.pool_forward(z, coef if mode else None, mode, lay, 2.0, 0.0, 0.9, 1.0, 1, keep_x)
        call()
        ts = []
        for _ in range(reps):
            t0 = time.thread_time(); call(); ts.append(time.thread_time() - t0)
        out[label] = [t / (T * P * W) * 1e9 for t in ts]
    print(json.dumps(out))

if __name__ == "__main__":
    if sys.argv[1] == "child":
        child(sys.argv[2], int(sys.argv[3])); sys.exit(0)
    rounds, libs = int(sys.argv[1]), dict(a.split("=", 1) for a in sys.argv[2:])
    print("load before:", os.popen("uptime").read().strip())
    res = {n: {} for n in libs}
    for r in range(rounds):
        order = list(libs) if r % 2 == 0 else list(libs)[::-1]
        for n in order:
            p = subprocess.run([sys.executable, __file__, "child", libs[n], "5"], capture_output=True, text=True, check=True)
            for k, v in json.loads(p.stdout).items():
                res[n].setdefault(k, []).extend(v)
    print("load after:", os.popen("uptime").read().strip())
    print("ns per neuron-step, min / median (one thread, float32, k = 2, T = 4 unless said)")
    for label, *_ in CASES:
        row = "  ".join(f"{n} {min(res[n][label]):.2f} / {statistics.median(res[n][label]):.2f}" for n in libs)
        print(f"{label:30s} {row}")
