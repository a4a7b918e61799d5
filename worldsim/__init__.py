"""WorldSim: a playable neural world simulator for a Minecraft-like voxel world."""
import gymnasium

__version__ = "0.1.0"

# Entry points are strings, so importing worldsim loads neither the engine nor numba.
gymnasium.register(
    "worldsim/VoxelWorld-v0",
    entry_point="worldsim.engine.env:VoxelEnv",
    vector_entry_point="worldsim.engine.env:VoxelVectorEnv",
)
gymnasium.register(
    "worldsim/WorldModel-v0",
    entry_point="worldsim.envs.world_model:WorldModelEnv",
    vector_entry_point="worldsim.envs.world_model:WorldModelVectorEnv",
)
