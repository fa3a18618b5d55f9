"""The on-disk run format, below everything that reads runs: checkpoints, the
run directory, history.csv, atomic writes, and the model a run holds."""
