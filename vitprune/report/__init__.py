"""Rendering: rich tables, JSON, model cards and plots."""
