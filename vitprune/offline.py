"""Whether the Hugging Face Hub can be reached: when it cannot, huggingface_hub is switched to offline mode so that
cached models and datasets load without waiting on the network (``vitprune.hub.load``, ``vitprune.data.hub``)."""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from huggingface_hub import constants


def _hub_reachable(timeout: float = 2.0) -> bool:
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_offline_if_unreachable() -> bool:
    """Switch huggingface_hub to offline mode when the Hub cannot be reached; return True when offline."""
    if constants.HF_HUB_OFFLINE:
        return True
    if not _hub_reachable():
        constants.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"  # for libraries that read the environment themselves
        return True
    return False
