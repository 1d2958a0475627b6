"""Keep a poisoned sample's own metadata true: fields an attack made stale are rewritten from what was written.

Sources record facts about each sample in ``KEY.json``: img2dataset writes the caption, a hash of the image
(``sha256``, ``md5`` or ``sha512``) and its size before resizing (``original_width``/``original_height``);
poisonlab's ingest adds ``download_<hash>``. After an attack replaces the caption or the image, these
would still describe the original: a copy whose JSON holds the clean caption beside a poisoned ``.txt``
tells any reader which samples were changed. Every copy (blind or not) therefore gets them recomputed
from the caption and payload actually written; ``width``/``height`` are the attacks' own business
(``image_meta``). The original values are not lost: the manifest records the original caption and sha256.

A hash field is set to the hash of the bytes written, as img2dataset would have recorded had it
downloaded them. On input that img2dataset resized, the clean samples' hashes describe bytes before the
resize (they differ from the stored image's hash) while a refreshed one matches its image: the README
notes this relation as what a blind copy cannot hide.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from poisonlab.pipelines.sample import Sample
from poisonlab.shards.images import ImageError, probe_image

HASH_FIELDS: Mapping[str, str] = {
    f"{prefix}{algo}": algo for algo in ("md5", "sha256", "sha512") for prefix in ("", "download_")
}
CAPTION_FIELD = "caption"
SIZE_FIELDS = ("original_width", "original_height")


def _image_size(sample: Sample, meta: Mapping[str, Any]) -> tuple[int, int] | None:
    width, height = meta.get("width"), meta.get("height")
    if isinstance(width, int) and isinstance(height, int):
        return width, height
    try:
        return probe_image(sample.payload or b"")
    except ImageError:
        return None


def _payload_fields(after: Sample, meta: dict[str, Any]) -> None:
    payload = after.payload or b""
    for name, algo in HASH_FIELDS.items():
        if isinstance(meta.get(name), str):
            meta[name] = hashlib.new(algo, payload).hexdigest()
    if any(name in meta for name in SIZE_FIELDS):
        size = _image_size(after, meta)
        if size is not None:
            meta["original_width"], meta["original_height"] = size


def freshen(before: Sample, after: Sample) -> Sample:
    """``after`` with the source's caption, hash and size fields describing its own caption and payload."""
    if not after.is_live:
        return after
    meta = dict(after.meta)
    if CAPTION_FIELD in meta and after.text != before.text:
        meta[CAPTION_FIELD] = after.text
    if after.payload != before.payload:
        _payload_fields(after, meta)
    return after if meta == dict(after.meta) else after.with_meta(**meta)
