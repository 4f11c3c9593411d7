"""Datasets: the synthetic person world and loaders for real formats, all onto the same columns."""
