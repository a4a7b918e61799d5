"""WorldSim: a playable neural world simulator for a Minecraft-like voxel world."""
__version__ = "0.1.0"
