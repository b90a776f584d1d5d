"""Ploutos: reinforcement-learning trading agents trained walk-forward on Slurm clusters."""

__version__ = "0.1.0"
