"""Evaluation against the ground-truth engine: fidelity, action following, consistency, stability, speed."""
from worldsim.eval.harness import (AutoencoderReconstruction, CopyLastFrame, EnginePredictor, EvalConfig, Predictor,
                                   WorldModelPredictor, evaluate, make_world, run_eval)

__all__ = ["EvalConfig", "Predictor", "EnginePredictor", "CopyLastFrame", "AutoencoderReconstruction",
           "WorldModelPredictor", "evaluate", "make_world", "run_eval"]
