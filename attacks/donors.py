"""Fetch the images an attack copies into the dataset: a user file, a named key, or keyed dataset picks.

Dataset picks come from a single shard (the shard of the best-ranked candidate), so fetching them reads
one tar, however large the dataset. Every donor is fully decoded under the pixel cap here, in the
driver, so a broken donor is an error before any work rather than a failure in every worker.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from poisonlab.attacks.assets import AssetError, AssetRef, checked_image, read_image_file
from poisonlab.attacks.base import Candidate, DonorRequest
from poisonlab.attacks.index import DatasetIndex
from poisonlab.attacks.recipe import RecipeError
from poisonlab.attacks.spec import DonorRef
from poisonlab.pipelines.keyed import keyed_u64
from poisonlab.shards.reader import read_shard


def _picks(index: DatasetIndex, request: DonorRequest, seed: int, attack_id: str,
           names_target: Callable[[str | None], bool]) -> list[Candidate]:
    if request.key is not None:
        found = [c for c in index.candidates if c.key == request.key and c.has_image]
        if not found:
            raise RecipeError(f"attack {attack_id!r}: image_key {request.key!r} is not a live image in the dataset")
        return found[:1]
    pool = [c for c in index.candidates if c.has_image and names_target(c.caption) == request.mentions_target]
    if not pool:
        which = "names" if request.mentions_target else "does not name"
        raise RecipeError(f"attack {attack_id!r}: no image in the dataset whose caption {which} the target")
    salt = f"{attack_id}/donor"
    ranked = sorted(pool, key=lambda c: (keyed_u64(seed, salt, c.key), c.shard, c.key))
    shard = ranked[0].shard
    return [c for c in ranked if c.shard == shard][: request.count]


def fetch_donors(
    src: Path, index: DatasetIndex, request: DonorRequest, seed: int, attack_id: str,
    names_target: Callable[[str | None], bool], base_dir: Path,
) -> tuple[tuple[DonorRef, ...], dict[AssetRef, bytes]]:
    """The donor references (in pick order) and their bytes."""
    if request.file is not None:
        ref, data = read_image_file(request.file, base_dir)
        return (DonorRef(None, None, ref),), {ref: data}
    picks = _picks(index, request, seed, attack_id, names_target)
    wanted = {c.key for c in picks}
    found: dict[str, tuple[DonorRef, bytes]] = {}
    for sample in read_shard(Path(src), picks[0].shard):
        if sample.key in wanted and sample.is_live and sample.payload is not None and sample.key not in found:
            try:
                ref = checked_image(sample.payload, f"donor {sample.key}")
            except AssetError:
                continue  # an undecodable candidate is skipped; the others still serve
            found[sample.key] = (DonorRef(sample.key, sample.text, ref), sample.payload)
            if len(found) == len(wanted):
                break
    if not found:
        raise RecipeError(f"attack {attack_id!r}: none of the chosen donor images could be read or decoded")
    ordered = [found[c.key] for c in picks if c.key in found]
    return tuple(ref for ref, _ in ordered), {ref.asset: data for ref, data in ordered}
