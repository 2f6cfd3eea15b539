"""FLOPs (fvcore + handles) and speed (interleaved, warmed-up timing) of dense and compressed models."""
from .flops import MacCount, count_macs, count_params

__all__ = ["MacCount", "count_macs", "count_params"]
