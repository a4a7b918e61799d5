"""Shared test setup."""
import os

# kernels: the Triton kernels run on the CPU under Triton's interpreter in tests. Triton reads this when
# a kernel is decorated, so it must be set before anything imports kernels.block_causal or kernels.cache;
# conftest.py is imported before any test module.
os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (setup.cfg runs two workers), each worker computes on one core: torch's OpenMP pool and
# numba's renderer threads would otherwise spin against the other worker's. Set before torch or numba is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for name in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
