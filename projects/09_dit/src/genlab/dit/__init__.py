"""The Diffusion Transformer (projects/09_dit)."""
