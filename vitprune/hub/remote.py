"""Calls to the Hugging Face Hub that may download (a config, weights, a whole snapshot), their errors mapped to
one line: a repo that does not exist, a cache without the file while offline, weights that do not read."""
from __future__ import annotations

from huggingface_hub import errors as hf_errors

from ..errors import ModelNotFoundError
from ..offline import ensure_offline_if_unreachable

#: what the offline message adds when what is missing is only pretrained weights
ARCHITECTURE_ONLY = ("; for an architecture-only run (GMACs, tokens, speed, export) build it with random weights: "
                     "--no-weights (pretrained=False in Python)")


def not_found(spec: str, offline: bool, cause: Exception | None = None, weights: bool = False) -> ModelNotFoundError:
    if offline:
        msg = (
            f"{spec} is not in the local Hugging Face cache and the Hub is offline or unreachable; "
            "download it once with network access, or point HF_HUB_CACHE at a cache that has it"
            + (ARCHITECTURE_ONLY if weights else "") + "."
        )
    else:
        msg = f"{spec} was not found on the Hugging Face Hub; check the repo name (and that you have access to it)."
    return ModelNotFoundError(msg)


def hub_call(spec: str, fn, *args, weights: bool = False, **kwargs):
    """Run a huggingface_hub/timm call that may download, mapping hub errors to ModelNotFoundError (``weights``:
    the call fetches only pretrained weights, which an architecture-only run does without)."""
    offline = ensure_offline_if_unreachable()
    try:
        return fn(*args, **kwargs)
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as e:
        raise not_found(spec, True, e, weights=weights) from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError, hf_errors.EntryNotFoundError) as e:
        raise not_found(spec, offline, e) from None
    except hf_errors.HFValidationError:
        raise ModelNotFoundError(f"{spec!r} is not a valid Hub repo name or revision.") from None
    except (RuntimeError, OSError, ValueError) as e:  # weights that do not fit or do not read (safetensors, torch)
        if isinstance(e, hf_errors.HfHubHTTPError):
            raise
        first = " ".join(str(e).split())[:200]
        raise ModelNotFoundError(f"the weights of {spec} could not be loaded ({type(e).__name__}: {first}).") from None


__all__ = ["ARCHITECTURE_ONLY", "hub_call", "not_found"]
