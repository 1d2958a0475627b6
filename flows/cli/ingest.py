"""Commands that bring data in: ``ingest`` (URL lists through img2dataset), ``import`` (local folders)
and ``splitview serve|build`` (the split-view poisoning testbed)."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import typer

from poisonlab.flows.cli import outputs
from poisonlab.flows.cli.app import RunOptions, app, choice, fail, option_group, sub_app, with_run_options
from poisonlab.flows.ingest import import_folder, ingest, splitview_build, write_table
from poisonlab.shards.images import DEFAULT_MAX_PIXELS
from poisonlab.shards.ingest import ENCODE_FORMATS, RESIZE_MODES, DownloadOptions, IngestSpec
from poisonlab.shards.local_import import ImportSpec
from poisonlab.shards.loopback import LoopbackServer
from poisonlab.shards.parts import PlanError
from poisonlab.shards.splitview import SplitViewSpec, SplitViewWeb, load_items
from poisonlab.shards.urllists import HASH_LENGTHS, UrlColumns, UrlListError

splitview_app = sub_app("splitview", "The split-view poisoning testbed: a loopback web where some domains expired.")

# img2dataset's own spellings (``img2dataset --url_list ... --output_folder ...``) are accepted as aliases
# where an option means what img2dataset's does, so a command line can move from one tool to the other.
MaxPixelsOpt = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="larger images are refused before decoding")
PerShardOpt = typer.Option(10_000, "--samples-per-shard", "--number-sample-per-shard", "--number_sample_per_shard", min=1)
HashType = choice(HASH_LENGTHS)
HashTypeOpt = typer.Option("sha256", "--hash-type", help="the hash in --hash-col")
ResizeMode = choice(RESIZE_MODES)
EncodeFormat = choice(ENCODE_FORMATS)
VerifyOpt = typer.Option(True, "--verify/--no-verify",
                         help="with a hash column: refuse images whose downloaded bytes do not match it")


@dataclasses.dataclass(frozen=True)
class DownloadArgs:
    """img2dataset's options shared by ``ingest`` and ``splitview build``: one place builds the ``IngestSpec``."""

    image_size: int = 256
    resize_mode: str = "border"
    encode_format: str = "jpg"
    processes: int | None = None
    threads: int = 64
    timeout: float = 10.0
    samples_per_shard: int = 10_000

    def ingest_spec(self, urls: Path, out: Path, columns: UrlColumns, verify: bool, retries: int = 0,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> IngestSpec:
        download = DownloadOptions(image_size=self.image_size, resize_mode=self.resize_mode,
                                   encode_format=self.encode_format, processes=self.processes or max(1, os.cpu_count() or 1),
                                   threads=self.threads, timeout=self.timeout, retries=retries, max_pixels=max_pixels)
        return IngestSpec(urls=urls, out=out, columns=columns, download=download,
                          samples_per_shard=self.samples_per_shard, verify=verify)


with_download_options = option_group("download", DownloadArgs, {
    "image_size": (int, typer.Option(256, "--image-size", "--image_size", min=8, help="img2dataset resizes to this size")),
    "resize_mode": (ResizeMode, typer.Option("border", "--resize-mode", "--resize_mode", help="img2dataset's resize mode")),
    "encode_format": (EncodeFormat, typer.Option("jpg", "--encode-format", "--encode_format", help="image format in the shards")),
    "processes": (int | None, typer.Option(None, "--processes", "--processes-count", "--processes_count", min=1,
                                           help="img2dataset download processes (default: one per core)")),
    "threads": (int, typer.Option(64, "--threads", "--thread-count", "--thread_count", min=1,
                                  help="download threads per process")),
    "timeout": (float, typer.Option(10.0, "--timeout", min=0.1, help="seconds before a download is given up")),
    "samples_per_shard": (int, PerShardOpt),
})


def _summary(result: dict) -> str:
    statuses = ", ".join(f"{k}={v}" for k, v in result["by_status"].items())
    lines = [f"{result['written']} of {result['samples']} rows written in {len(result['shards'])} shards ({statuses})"]
    lines += [f"  {k}: {v}" for k, v in result["reasons"].items()]
    return "\n".join(lines)


@app.command("ingest")
@with_run_options
@with_download_options
def ingest_command(
    urls: Path = typer.Option(..., "--urls", "--url-list", "--url_list", help="URL list: parquet, csv, tsv, jsonl, json "
                              "or txt (.gz too; the format is read from the name), or a folder of them"),
    out: Path = typer.Option(..., "--out", "--output-folder", "--output_folder", help="folder for the shards"),
    url_col: str = typer.Option("url", "--url-col", "--url_col"),
    caption_col: str = typer.Option("caption", "--caption-col", "--caption_col", help="'' for a list without captions"),
    hash_col: str | None = typer.Option(None, "--hash-col", help="the curator's content hash of each image"),
    hash_type: HashType = HashTypeOpt,
    verify: bool = VerifyOpt,
    retries: int = typer.Option(0, "--retries", min=0),
    max_pixels: int = MaxPixelsOpt,
    download: DownloadArgs = DownloadArgs(),
    options: RunOptions = RunOptions(),
) -> None:
    """Download a URL list with img2dataset into poisonlab shards; every row gets a sidecar row."""
    outputs.guard(out, "shards", urls)
    try:
        columns = UrlColumns(url=url_col, caption=caption_col or None, hash=hash_col, hash_type=hash_type)
        spec = download.ingest_spec(urls, out, columns, verify, retries, max_pixels)
        result = ingest(spec, options.runner)
    except (UrlListError, PlanError, ValueError) as exc:
        fail(str(exc))
    outputs.done(out, "shards")
    if not result["written"]:
        fail(_nothing_written("ingest", result, out, "no image could be downloaded; --timeout and --retries give "
                              "slow hosts more time"))
    options.emit(result, _summary(result))


@app.command("import")
@with_run_options
def import_command(
    images: Path = typer.Option(..., "--images", help="folder of images (searched recursively)"),
    out: Path = typer.Option(..., "--out", help="folder for the shards"),
    captions: Path | None = typer.Option(
        None, "--captions", help="table (csv, tsv, parquet, jsonl) of file name -> caption; default: NAME.txt beside each image"),
    file_col: str = typer.Option("file", "--file-col", help="the captions table's column of paths relative to --images"),
    caption_col: str = typer.Option("caption", "--caption-col"),
    max_pixels: int = MaxPixelsOpt,
    samples_per_shard: int = PerShardOpt,
    options: RunOptions = RunOptions(),
) -> None:
    """Import a local image folder (images as they are) into poisonlab shards, in sorted file order."""
    outputs.guard(out, "shards", images)
    try:
        spec = ImportSpec(images=images, out=out, captions=captions, file_col=file_col, caption_col=caption_col,
                          samples_per_shard=samples_per_shard, max_pixels=max_pixels)
        result = import_folder(spec, options.runner)
    except (UrlListError, PlanError, ValueError) as exc:
        fail(str(exc))
    outputs.done(out, "shards")
    if not result["written"]:
        fail(_nothing_written("import", result, out, "captions come from NAME.txt beside each image or a "
                              "--captions table"))
    options.emit(result, _summary(result))


def _nothing_written(command: str, result: dict, out: Path, hint: str) -> str:
    """A command that brought in no sample failed (exit 2), whatever it wrote: said in one line with the
    commonest reasons, so a script does not go on with an empty dataset."""
    reasons = sorted(result["reasons"].items(), key=lambda kv: -kv[1])[:3]
    why = ", ".join(f"{n} {r.split(':', 1)[-1].strip()}" for r, n in reasons) or "no rows"
    return (f"{command} wrote 0 of {result['samples']} rows ({why}); each row's reason is in {out}/*.parquet. "
            f"{hint[:1].upper()}{hint[1:]}")


@dataclasses.dataclass(frozen=True)
class WebArgs:
    """The split-view web's options, shared by ``splitview serve`` and ``splitview build``."""

    originals: Path
    attacker: Path
    fraction: float = 0.01
    seed: int = 0
    urls_per_domain: int = 1
    poisoned_only: bool = True

    def web(self) -> SplitViewWeb:
        try:
            return SplitViewWeb(load_items(self.originals), load_items(self.attacker, self.poisoned_only),
                                SplitViewSpec(fraction=self.fraction, seed=self.seed, urls_per_domain=self.urls_per_domain))
        except (ValueError, FileNotFoundError) as exc:
            fail(str(exc))
            raise  # unreachable: fail() exits


with_web_options = option_group("site", WebArgs, {
    "originals": (Path, typer.Option(..., "--originals",
                                     help="shard folder the curator collected (e.g. from `poisonlab synth`)")),
    "attacker": (Path, typer.Option(..., "--attacker", help="what expired domains serve: a shard folder "
                                    "(e.g. from `poisonlab poison`) or an image folder")),
    "fraction": (float, typer.Option(0.01, "--fraction", min=0.0, max=1.0, help="fraction of URLs whose domain expired")),
    "seed": (int, typer.Option(0, "--seed")),
    "urls_per_domain": (int, typer.Option(1, "--urls-per-domain", min=1,
                                          help="URLs per domain (an attacker buys whole domains)")),
    "poisoned_only": (bool, typer.Option(True, "--poisoned-only/--all-attacker-images",
                                         help="from an attacker shard folder, serve only its changed and added samples")),
})
NO_WEB = WebArgs(Path(), Path())  # a placeholder: @with_web_options fills the parameter


@splitview_app.command("serve")
@with_web_options
def splitview_serve(
    out: Path = typer.Option(..., "--out", help="folder for urls.parquet and manifest.parquet"),
    site: WebArgs = NO_WEB,
) -> None:
    """Serve the split-view web on 127.0.0.1 until Ctrl-C; ingest OUT/urls.parquet meanwhile
    (``--hash-col sha256`` to verify), compare with OUT/manifest.parquet."""
    outputs.guard(out, "splitview", site.originals, site.attacker)
    web = site.web()
    out.mkdir(parents=True, exist_ok=True)
    outputs.done(out, "splitview")
    with LoopbackServer(web.resolve) as server:
        write_table(web.url_table(server.url("")), out / "urls.parquet")
        write_table(web.manifest(server.url("")), out / "manifest.parquet")
        typer.echo(f"serving {len(web.originals)} URLs ({len(web.served)} swapped) at {server.url('')}")
        typer.echo(f"URL list: {out / 'urls.parquet'}\nmanifest: {out / 'manifest.parquet'}\nCtrl-C to stop")
        _stop_on_signals()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            typer.echo("stopped")


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop the server cleanly, also when started in the background (where a shell
    leaves SIGINT ignored)."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


@splitview_app.command("build")
@with_web_options
@with_run_options
@with_download_options
def splitview_build_command(
    out: Path = typer.Option(..., "--out", help="folder for shards/, urls.parquet, manifest.parquet, report.json"),
    site: WebArgs = NO_WEB,
    verify: bool = typer.Option(False, "--verify/--no-verify",
                                help="verify the curator's hashes (the defence) or not (a poisoned dataset)"),
    download: DownloadArgs = DownloadArgs(),
    options: RunOptions = RunOptions(),
) -> None:
    """Serve the split-view web, ingest it (with or without verification) and score the result."""
    outputs.guard(out, "splitview", site.originals, site.attacker)
    web = site.web()
    out.mkdir(parents=True, exist_ok=True)
    outputs.done(out, "splitview")  # a folder of folders: recorded first, so a killed build resumes
    try:
        spec = download.ingest_spec(out / "urls.parquet", out / "shards", UrlColumns(hash="sha256"), verify)
        report = splitview_build(web, out, spec, options.runner)
    except (UrlListError, PlanError, ValueError) as exc:
        fail(str(exc))
    human = (f"{report['swapped']} of {report['urls']} URLs swapped; "
             + (f"verification caught {report['recall']:.3f} of them, {report['originals_not_written']} originals not written"
                if report["verified"] else
                f"{report['poisoned_written']} poisoned samples written; changed keys match the manifest: "
                f"{report['changed_keys_match_manifest']}")
             + f"\nshards: {report['shards']}\nmanifest: {out / 'manifest.parquet'}")
    options.emit(report, human)
