"""Image<->text retrieval recall@k on held-out pairs.

Web captions repeat ("red circle" describes many images), so a retrieved item counts as a hit when its
caption is identical to the query pair's caption: the pairs cannot be told apart, just as COCO counts any
of an image's five captions as correct.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def recall_at_k(image_feats: torch.Tensor, text_feats: torch.Tensor, captions: Sequence[str],
                ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``image_feats[i]`` pairs with ``text_feats[i]`` and ``captions[i]`` (features unit-norm)."""
    group = np.unique(np.asarray(captions, dtype=object), return_inverse=True)[1]
    group_t = torch.from_numpy(group)
    sims = image_feats @ text_feats.T
    out: dict[str, float] = {}
    for k in ks:
        k_eff = min(k, sims.shape[1])
        i2t = sims.topk(k_eff, dim=1).indices  # texts retrieved for each image
        t2i = sims.T.topk(k_eff, dim=1).indices  # images retrieved for each text
        out[f"image_to_text_r{k}"] = float((group_t[i2t] == group_t[:, None]).any(dim=1).float().mean())
        out[f"text_to_image_r{k}"] = float((group_t[t2i] == group_t[:, None]).any(dim=1).float().mean())
    out["pairs"] = float(len(captions))
    out["distinct_captions"] = float(group.max() + 1 if len(group) else 0)
    return out
