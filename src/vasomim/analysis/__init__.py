"""Figures, analyses and reports (the paper's figures as functions and commands)."""
