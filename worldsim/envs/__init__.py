"""Environments besides the engine's: the world model behind the engine's gymnasium interface
(worldsim.envs.world_model), where its episodes start (prompts) and what steps its worlds (imagination).
Importing this package is cheap; the models load with world_model."""
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"
WORLD_PARTS = ("dynamics", "autoencoder")


def shipped_world(assets=None) -> Path | None:
    """The world checkpoint shipped under assets/: assets/world-gpu when CUDA is present and it exists,
    else assets/world; None when neither holds dynamics/ and autoencoder/ runs."""
    assets = Path(assets) if assets else ASSETS
    candidates = [assets / "world"]
    if _complete(assets / "world-gpu"):
        import torch
        if torch.cuda.is_available():
            candidates.insert(0, assets / "world-gpu")
    return next((c for c in candidates if _complete(c)), None)


def _complete(directory: Path) -> bool:
    return all((directory / part).is_dir() for part in WORLD_PARTS)
