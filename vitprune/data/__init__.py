"""Datasets: image folders, saved Hugging Face datasets, and the bundled demo digits."""
