"""The pygame game: a window onto any WorldSim environment."""
