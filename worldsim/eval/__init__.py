"""Evaluation against the ground-truth engine: fidelity, action following, consistency, stability, speed.

The names below load worldsim.eval.harness on first use, so `python -m worldsim.eval.idm` runs cleanly.
"""
__all__ = ["EvalConfig", "Predictor", "EnginePredictor", "CopyLastFrame", "AutoencoderReconstruction",
           "WorldModelPredictor", "evaluate", "make_world", "run_eval"]


def __getattr__(name):
    if name in __all__:
        from worldsim.eval import harness
        return getattr(harness, name)
    raise AttributeError(f"module 'worldsim.eval' has no attribute {name!r}")
