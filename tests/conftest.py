"""Shared test setup."""
import os

# kernels: the Triton kernels run on the CPU under Triton's interpreter in tests. Triton reads this when
# a kernel is decorated, so it must be set before anything imports kernels.block_causal or kernels.cache;
# conftest.py is imported before any test module.
os.environ.setdefault("TRITON_INTERPRET", "1")
