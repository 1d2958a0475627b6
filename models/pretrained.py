"""open_clip pretrained tags (``--weights openai``): present on this machine, or a one-line error.

Asked for weights it cannot fetch (offline, or not cached), open_clip logs an ERROR and raises a chain of
three tracebacks. Fetching the tag's file first (from the Hugging Face cache when offline) turns that into
one line naming the model, the tag and the ways to provide the weights.
"""

from __future__ import annotations

import open_clip

from poisonlab.models.errors import CheckpointError


def _offline() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def fetch_pretrained(arch: str, tag: str) -> None:
    """Make sure the weights of ``arch``'s pretrained ``tag`` are on this machine (downloading them if allowed)."""
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        known = f"its tags: {', '.join(tags)}" if tags else f"{arch} has no pretrained tags"
        raise CheckpointError(f"--weights {tag!r} is neither a weights file nor a pretrained tag of {arch} ({known})")
    try:
        open_clip.download_pretrained(cfg)
    except Exception as exc:
        state = "offline (HF_HUB_OFFLINE) and not cached" if _offline() else f"not available ({type(exc).__name__})"
        raise CheckpointError(
            f"pretrained weights {arch} {tag!r} are {state}: fetch them once with network (they go to the Hugging "
            f"Face cache; set HF_HOME to a copy of it), or give a local .safetensors or .pt file as --weights"
        ) from None
