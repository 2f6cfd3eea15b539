"""Model loading (timm names, hf-hub:, local folders, the demo), saving in the Hub folder format, pushing."""
from .load import check_vit, demo_dir, load, load_model
from .save import read_vitprune_section, save, write_atomic

__all__ = ["check_vit", "demo_dir", "load", "load_model", "read_vitprune_section", "save", "write_atomic"]
