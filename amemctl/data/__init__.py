"""Datasets: what a `load` stage can bring into a pipeline."""
