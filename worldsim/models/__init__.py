"""The world model: the frame autoencoder (pixels ⇄ latents) and the dynamics transformer."""
