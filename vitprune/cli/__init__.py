"""The vitprune command line (Typer + rich); see main.py."""
