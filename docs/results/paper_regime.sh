#!/usr/bin/env bash
# The papers'-regime reproduction (docs/results/paper_regime.md): every block, both
# datasets, seeds 0 1 2, SGD momentum 0.9. Resumable: re-running skips finished runs.
# Usage: docs/results/paper_regime.sh OUT_DIR [EPOCHS]
set -u
OUT=${1:-runs/repro}; EPOCHS=${2:-15}
PY=${PYTHON:-python}
COMMON=(--model conv --channels 16 16 --timesteps 2 --epochs "$EPOCHS" --batch-size 128
        --optimizer sgd --lr 0.1 --momentum 0.9 --weight-decay 5e-4 --workers 2 --threads 1 -q)
block() {  # block NAME DATASET SEEDS... -- sweep args
  local name=$1 ds=$2; shift 2
  local seeds=(); while [ "$1" != "--" ]; do seeds+=("$1"); shift; done; shift
  $PY -m snn2hw sweep "$@" --seeds "${seeds[@]}" --dataset "$ds" "${COMMON[@]}" --out "$OUT/$ds/$name"
}
run_all() {  # run_all SEEDS...
  for ds in digits mnist1d; do
    block cpng "$ds" "$@" -- --methods sg cpng --param-grid surrogate=triangle,rectangular surrogate_param=1,20
    block asgl "$ds" "$@" -- --methods sg asgl --param-grid \
      'asgl:alpha_init+sg:surrogate_param=(0.5,2),(1,1),(2.5,0.4),(5,0.2),(10,0.1)' sg:surrogate=rectangular
    block psg "$ds" "$@" -- --methods sg psg --param-grid \
      'psg:gamma_init+sg:surrogate_param=(1,1),(2,2),(5,5)' sg:surrogate=psg_arctan \
      psg:pda=false,true psg:dgamma=analytic,printed
    block dspike "$ds" "$@" -- --methods sg dspike --param-grid sg:surrogate=dspike sg:surrogate_param=1 \
      dspike:fdg_max_coords=48
    block gsg "$ds" "$@" -- --methods sg gsg --reset soft_nodecay --param-grid sg:surrogate=gsg_tanh \
      sg:surrogate_param=0.5,10
  done
}
for s in 0 1 2; do run_all "$s"; done   # seed by seed: a cut-short run still has whole tables
run_all 0 1 2                           # nothing left to train: collects every block over all seeds
