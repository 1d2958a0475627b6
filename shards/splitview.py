"""The split-view poisoning testbed (Carlini et al., 2023, "Poisoning Web-Scale Training Datasets is
Practical"): a web where some domains have expired and now serve an attacker's content.

A curator collected the ``originals`` (a shard folder) and published their URLs with the hash of each
image. Later, the domains of a chosen fraction of those URLs expire and whoever buys them serves other
bytes: images from ``attacker``, which is either a shard folder (for example the output of
``poisonlab poison``: its changed and added samples, by key when the keys match) or any image folder.
``SplitViewWeb`` holds both views and answers HTTP paths for ``shards.loopback.LoopbackServer``; its
manifest names every swapped URL. Ingesting its URL list without verification yields a poisoned
dataset whose changed keys are exactly the manifest's; with ``verify_hash`` every one is caught.

Every choice (which domains expire, which attacker image each swapped URL serves) is keyed randomness,
so the same seed builds the same web.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from poisonlab.pipelines.keyed import keyed_u64
from poisonlab.pipelines.sample import LIVE_STATUSES, Status
from poisonlab.shards.folder_scan import scan_folder
from poisonlab.shards.hashcheck import HASH_MISMATCH
from poisonlab.shards.layout import list_shards, list_sidecars, sidecar_path
from poisonlab.shards.loopback import Response
from poisonlab.shards.reader import MAX_MEMBER_BYTES, read_shard
from poisonlab.shards.safe_open import open_inside, read_capped

STAGE = "splitview"
CONTENT_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "bmp": "image/bmp"}
POISONED_STATUSES = frozenset({Status.CHANGED.value, Status.ADDED.value})


@dataclasses.dataclass(frozen=True)
class WebItem:
    """One image as a web server holds it."""

    name: str
    payload: bytes
    ext: str
    caption: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


@dataclasses.dataclass(frozen=True)
class SplitViewSpec:
    fraction: float = 0.01  # of the URLs whose domain expires
    seed: int = 0
    urls_per_domain: int = 1  # an attacker buys whole domains: every URL on one is swapped together

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], not {self.fraction}")
        if self.urls_per_domain < 1:
            raise ValueError("urls_per_domain must be at least 1")


def _live_items(directory: Path, keys: set[str] | None = None) -> list[WebItem]:
    items = []
    for shard in list_shards(directory):
        for s in read_shard(directory, shard):
            if s.is_live and s.payload is not None and (keys is None or s.key in keys):
                items.append(WebItem(s.key, s.payload, s.payload_ext, s.text))
    return items


def _folder_items(root: Path) -> list[WebItem]:
    """An attacker folder's images, read without following links out of the folder."""
    scan = scan_folder(root)
    items = []
    for rel in scan.images():
        with open_inside(root, rel, scan.shared_inodes) as fh:
            items.append(WebItem(rel, read_capped(fh, MAX_MEMBER_BYTES, rel), rel.rpartition(".")[2].lower()))
    return items


def load_items(path: Path, poisoned_only: bool = False) -> list[WebItem]:
    """Images of a shard folder (with ``poisoned_only``: its changed and added samples, when it has any)
    or of an image folder, in key or path order."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder")
    if list_shards(path):
        keys = None
        if poisoned_only:
            keys = {k for shard in list_sidecars(path)
                    for k, status in zip(*_columns(sidecar_path(path, shard), "key", "status"), strict=True)
                    if status in POISONED_STATUSES}
        items = _live_items(path, keys or None)
    else:
        items = _folder_items(path)
    if not items:
        raise ValueError(f"no images in {path}")
    return sorted(items, key=lambda item: item.name)


def _columns(path: Path, *names: str) -> list[list[Any]]:
    table = pq.read_table(path, columns=list(names))
    return [table.column(n).to_pylist() for n in names]


class SplitViewWeb:
    """The originals, their domains, which domains expired and what the new owner serves there."""

    def __init__(self, originals: Iterable[WebItem], attacker: Iterable[WebItem], spec: SplitViewSpec) -> None:
        self.spec = spec
        self.originals = sorted(originals, key=lambda item: item.name)
        attack = sorted(attacker, key=lambda item: item.name)
        if not self.originals or not attack:
            raise ValueError("the split-view web needs originals and attacker images")
        self.domain = self._assign_domains()
        expired = self._expired_domains()
        by_name = {item.name: item for item in attack}
        self.served: dict[str, WebItem] = {}  # original name -> attacker item, for swapped URLs
        for item in self.originals:
            if self.domain[item.name] in expired:
                choice = self._attacker_item(item, attack, by_name)
                if choice is not None:
                    self.served[item.name] = choice
        self._paths = {self.path(item): item for item in self.originals}

    def _assign_domains(self) -> dict[str, str]:
        """Domains hold ``urls_per_domain`` URLs each, grouped in keyed order (not by key neighbourhood)."""
        order = sorted(self.originals, key=lambda it: keyed_u64(self.spec.seed, f"{STAGE}/domain", it.name))
        return {it.name: f"site{i // self.spec.urls_per_domain:06d}.example" for i, it in enumerate(order)}

    def _expired_domains(self) -> set[str]:
        """Whole domains in keyed order until ``fraction`` of the URLs are covered."""
        target = math.ceil(self.spec.fraction * len(self.originals) - 1e-9)
        sizes: dict[str, int] = {}
        for name in self.domain.values():
            sizes[name] = sizes.get(name, 0) + 1
        expired, covered = set(), 0
        for name in sorted(sizes, key=lambda d: keyed_u64(self.spec.seed, f"{STAGE}/expire", d)):
            if covered >= target:
                break
            expired.add(name)
            covered += sizes[name]
        return expired

    def _attacker_item(self, original: WebItem, attack: list[WebItem], by_name: dict[str, WebItem]) -> WebItem | None:
        """The attacker's image for one URL: the poisoned version of this very sample when the attacker
        set has one, else a keyed pick; never bytes identical to the original (that is no swap)."""
        same = by_name.get(original.name)
        if same is not None and same.payload != original.payload:
            return same
        start = keyed_u64(self.spec.seed, f"{STAGE}/content", original.name) % len(attack)
        for step in range(len(attack)):
            candidate = attack[(start + step) % len(attack)]
            if candidate.payload != original.payload:
                return candidate
        return None

    def path(self, item: WebItem) -> str:
        return f"/{self.domain[item.name]}/{item.name.replace('/', '_')}.{item.ext}"

    def resolve(self, path: str) -> Response | None:
        original = self._paths.get(path)
        if original is None:
            return None
        item = self.served.get(original.name, original)
        return Response(body=item.payload, content_type=CONTENT_TYPES.get(item.ext, "application/octet-stream"))

    def url_table(self, base_url: str) -> pa.Table:
        """The URL list as the curator published it: URL, caption, the original's sha256, source key, domain."""
        base = base_url.rstrip("/")
        return pa.table({
            "url": [base + self.path(it) for it in self.originals],
            "caption": [it.caption for it in self.originals],
            "sha256": [it.sha256 for it in self.originals],
            "source_key": [it.name for it in self.originals],
            "domain": [self.domain[it.name] for it in self.originals],
        })

    def manifest(self, base_url: str) -> pa.Table:
        """One row per swapped URL: what the curator hashed and what the new domain owner serves."""
        base = base_url.rstrip("/")
        rows = [it for it in self.originals if it.name in self.served]
        return pa.table({
            "url": pa.array([base + self.path(it) for it in rows], type=pa.string()),
            "source_key": pa.array([it.name for it in rows], type=pa.string()),
            "domain": pa.array([self.domain[it.name] for it in rows], type=pa.string()),
            "original_sha256": pa.array([it.sha256 for it in rows], type=pa.string()),
            "served_sha256": pa.array([self.served[it.name].sha256 for it in rows], type=pa.string()),
            "attacker_item": pa.array([self.served[it.name].name for it in rows], type=pa.string()),
        })


def _sidecar_rows(directory: Path, hash_type: str) -> list[dict[str, Any]]:
    wanted = ["key", "status", "url", f"download_{hash_type}"]
    rows = []
    for shard in list_sidecars(directory):
        table = pq.read_table(sidecar_path(directory, shard))
        for name in wanted:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
        rows += table.select(wanted).to_pylist()
    return rows


def evaluate_splitview(
    shards: Path, urls: pa.Table, manifest: pa.Table, verified: bool, hash_type: str = "sha256"
) -> tuple[dict[str, Any], pa.Table]:
    """Compare an ingest of the split-view web with its manifest.

    A key is *changed* when its sample was written but the bytes downloaded for it are not the ones the
    curator hashed: without verification they must be exactly the manifest's keys; with verification
    ``recall`` is the share of swapped URLs caught as ``hash_mismatch``. Returns the report and the
    manifest with each swapped URL's key and status.
    """
    expected = dict(zip(urls.column("url").to_pylist(), urls.column("sha256").to_pylist(), strict=True))
    swapped_urls = set(manifest.column("url").to_pylist())
    rows = _sidecar_rows(Path(shards), hash_type)
    by_url = {r["url"]: r for r in rows}
    changed = {r["key"] for r in rows if r["status"] in LIVE_STATUSES
               and r[f"download_{hash_type}"] != expected.get(r["url"])}
    swapped_keys = {by_url[u]["key"] for u in swapped_urls if u in by_url}
    caught = {by_url[u]["key"] for u in swapped_urls if u in by_url and by_url[u]["status"] == HASH_MISMATCH}
    originals = [r for r in rows if r["url"] not in swapped_urls]
    report = {
        "urls": len(rows),
        "swapped": len(swapped_urls),
        "swapped_fraction": len(swapped_urls) / max(1, len(rows)),
        "poisoned_written": len(changed & swapped_keys),
        "changed_keys": len(changed),
        "changed_keys_match_manifest": None if verified else changed == swapped_keys,
        "hash_mismatches": sum(r["status"] == HASH_MISMATCH for r in rows),
        "recall": len(caught) / len(swapped_urls) if swapped_urls else None,
        "originals_written": sum(r["status"] in LIVE_STATUSES for r in originals),
        "originals_not_written": sum(r["status"] not in LIVE_STATUSES for r in originals),
    }
    keys = [by_url.get(u, {}).get("key") for u in manifest.column("url").to_pylist()]
    statuses = [by_url.get(u, {}).get("status") for u in manifest.column("url").to_pylist()]
    manifest = manifest.append_column("key", pa.array(keys, type=pa.string()))
    manifest = manifest.append_column("ingest_status", pa.array(statuses, type=pa.string()))
    return report, manifest
