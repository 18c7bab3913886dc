"""Experiments: the Hydra apps, their configs and the plotting scripts."""
