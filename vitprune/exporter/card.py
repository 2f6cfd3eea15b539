"""The model card's ONNX section lives in :mod:`vitprune.report.onnx_card` (the card is report's); its name is
importable from here too."""
from ..report.onnx_card import onnx_card_lines

__all__ = ["onnx_card_lines"]
