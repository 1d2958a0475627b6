"""Run-level tables live in ``DIR/_run/``: a glob over a shard folder's ``*.parquet`` (DuckDB, pyarrow) reads
only per-shard sidecars, and folders written with the tables beside the shards still load."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from poisonlab.attacks import manifest_path, poison_local, read_manifest, recipe_from_options
from poisonlab.filters.metrics import read_manifest_keys
from poisonlab.filters.pipeline import CleanJob
from poisonlab.flows.guards import folder_kind
from poisonlab.shards.layout import find_run_file, run_file

RECIPE = recipe_from_options("badnets", "red circle", None, 12, 0, [])


@pytest.fixture(scope="module")
def poisoned(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("layout") / "poisoned"
    poison_local(tiny_shards, out, RECIPE)
    return out


def test_a_glob_over_the_shard_folder_reads_only_sidecars(poisoned: Path) -> None:
    assert (poisoned / "_run" / "manifest.parquet").is_file() and not (poisoned / "manifest.parquet").exists()
    duckdb = pytest.importorskip("duckdb")
    glob = str(poisoned / "*.parquet")
    by_status = dict(duckdb.sql(f"select status, count(*) from '{glob}' group by status").fetchall())
    assert by_status == {"ok": 228, "changed": 12}
    joined = duckdb.sql(f"select count(*) from '{glob}' s join '{poisoned}/_run/manifest.parquet' m using (key) "
                        "where s.status = 'changed'").fetchall()
    assert joined == [(12,)]
    assert ds.dataset(sorted(poisoned.glob("*.parquet")), format="parquet").to_table().num_rows == 240


def test_folders_with_tables_beside_the_shards_still_load(poisoned: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(poisoned, old)
    (old / "_run" / "manifest.parquet").rename(old / "manifest.parquet")
    (old / "_run").rmdir()
    assert manifest_path(old) == old / "manifest.parquet" and read_manifest(old).num_rows == 12
    assert set(read_manifest_keys(old)) == set(read_manifest_keys(poisoned)) == set(read_manifest_keys(manifest_path(poisoned)))
    assert folder_kind(old) == folder_kind(poisoned) == "poisoned"
    # a cleaned folder of the old layout keeps its exclusion table where it is (a resumed clean finds it)
    cleaned = tmp_path / "cleaned"
    cleaned.mkdir()
    pq.write_table(pa.table({"key": ["a"]}), cleaned / "exclusions.parquet")
    assert folder_kind(cleaned) == "cleaned" and find_run_file(cleaned, "exclusions.parquet") == cleaned / "exclusions.parquet"
    job = CleanJob(tmp_path, cleaned, "scores", None, pa.table({"key": ["a"]}), 1, 1, [])  # type: ignore[arg-type]
    assert job.exclusions_path == cleaned / "exclusions.parquet"
    fresh = tmp_path / "fresh"
    run_file(fresh, "exclusions.parquet").parent.mkdir(parents=True)
    pq.write_table(pa.table({"key": ["a"]}), run_file(fresh, "exclusions.parquet"))
    assert folder_kind(fresh) == "cleaned"


def test_a_resumed_old_folder_moves_its_manifest_into_the_run_folder(poisoned: Path, tiny_shards: Path,
                                                                    tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(poisoned, old)
    (old / "_run" / "manifest.parquet").rename(old / "manifest.parquet")
    poison_local(tiny_shards, old, RECIPE)  # every shard is complete: only the books are redone
    assert not (old / "manifest.parquet").exists()
    assert run_file(old, "manifest.parquet").read_bytes() == run_file(poisoned, "manifest.parquet").read_bytes()
