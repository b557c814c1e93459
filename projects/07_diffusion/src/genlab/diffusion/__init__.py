"""DDPM, DDIM, the score-SDE view and guidance (projects/07_diffusion)."""
