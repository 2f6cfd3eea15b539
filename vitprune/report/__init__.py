"""Rendering: tables, the model card and plots. Nothing here runs a model.

What "dense" means is said once, here, for every table and plot: in ``compress`` (and the card) the dense column is
the teacher the model was distilled from; in ``profile``, ``export`` and ``sweep`` it is the same weights without
the method.
"""

DENSE_TEACHER = "dense teacher"
DENSE_SAME_WEIGHTS = "dense (same weights)"


def sweep_dense(mode: str) -> str:
    """What the dense reference of a sweep is: the teacher when every point was fine-tuned from it, else the same
    weights without the method."""
    if mode == "trained":
        return "dense = the teacher every point was fine-tuned from"
    return "dense = the same weights without the method"
