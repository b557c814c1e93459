"""Rectified flow, flow matching and consistency models (projects/10_consistency)."""
