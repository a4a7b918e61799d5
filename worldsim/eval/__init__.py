"""Evaluation against the ground-truth engine: fidelity, action following, consistency, stability, speed.

The names below load worldsim.eval.harness or worldsim.eval.worlds on first use, so `python -m worldsim.eval.idm`
runs cleanly.
"""
import importlib

_HOMES = {"EvalConfig": "harness", "evaluate": "harness", "run_eval": "harness", "Predictor": "worlds",
          "EnginePredictor": "worlds", "CopyLastFrame": "worlds", "AutoencoderReconstruction": "worlds",
          "WorldModelPredictor": "worlds", "make_world": "worlds"}
__all__ = list(_HOMES)


def __getattr__(name):
    if name in _HOMES:
        return getattr(importlib.import_module(f"worldsim.eval.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'worldsim.eval' has no attribute {name!r}")
