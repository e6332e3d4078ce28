"""Numerics compiled from theory/'s SymPy expressions (NumPy + Numba)."""
import os

import numba

# Numba's OpenMP layer busy-waits between parallel regions; on a machine whose cores are shared (2 cores
# here, and torch's own OpenMP pool in the same process) each short parallel call then costs ~10-40 ms of
# scheduler latency instead of microseconds (measured: exponent_grid 44 ms with "omp", 7 ms with
# "workqueue").  Prefer TBB, then the workqueue; an explicit NUMBA_THREADING_LAYER still wins.
if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["tbb", "workqueue", "omp"]
