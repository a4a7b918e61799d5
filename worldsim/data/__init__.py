"""Trajectories on disk: the VPT-compatible interchange form, the training cache, clip datasets, conversion."""
