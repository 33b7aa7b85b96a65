"""Procedures of several trainer runs: SetFit, continual-learning sequences."""
