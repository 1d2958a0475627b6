"""Jobs run in codec threads come back in order, fail where they would have failed, stop with their
consumer, and change no byte of a poisoning run."""

from __future__ import annotations

import io
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import files
from PIL import Image

from poisonlab.attacks import components, poison_local, prepare_poisoning
from poisonlab.attacks.recipe import parse_recipe
from poisonlab.pipelines import ordered_jobs
from poisonlab.pipelines.executor import run_shard_task
from poisonlab.pipelines.ordered_jobs import Job, codec_threads, in_order, lend_cpus, lent_cpus
from poisonlab.shards import images


def _slow_square(value: int, delay: float) -> int:
    time.sleep(delay)
    return value * value


def _mixed(n: int, seed: int) -> list[int | Job[int]]:
    """Every third item a plain value, the others jobs that take a random few milliseconds."""
    rng = random.Random(seed)
    return [i if i % 3 == 0 else Job(_slow_square, i, rng.uniform(0, 0.004)) for i in range(n)]


def _expected(n: int) -> list[int]:
    return [i if i % 3 == 0 else i * i for i in range(n)]


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_results_come_back_in_the_order_the_items_came(threads):
    assert list(in_order(iter(_mixed(120, seed=threads)), threads)) == _expected(120)


def test_a_failing_job_raises_where_its_result_would_have_come():
    def boom() -> int:
        raise ValueError("job 7 failed")

    items: list[int | Job[int]] = [Job(_slow_square, i, 0.001) for i in range(7)] + [Job(boom)] + list(range(8, 20))
    got: list[int] = []
    with pytest.raises(ValueError, match="job 7 failed"):
        for value in in_order(iter(items), threads=3):
            got.append(value)
    assert got == [i * i for i in range(7)]


def test_a_consumer_that_stops_early_leaves_no_thread_and_starts_few_jobs():
    started: list[int] = []
    lock = threading.Lock()

    def job(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.002)
        return i

    stream = in_order((Job(job, i) for i in range(1000)), threads=2, window=6)
    assert [next(stream) for _ in range(5)] == list(range(5))
    stream.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("poisonlab-codec")]
    assert len(started) <= 5 + 6 + 2  # consumed, the window, and what the threads had taken


def test_at_most_the_window_is_in_flight():
    taken = 0
    most_ahead = 0

    def source():
        nonlocal taken
        for i in range(200):
            taken += 1
            yield Job(_slow_square, i, 0.0005)

    for consumed, _ in enumerate(in_order(source(), threads=3, window=5), start=1):
        most_ahead = max(most_ahead, taken - consumed)
    assert most_ahead <= 5


def test_only_a_runner_that_lends_its_cpus_gets_codec_threads(monkeypatch):
    assert codec_threads() == 1
    monkeypatch.setattr(ordered_jobs.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with lend_cpus():
        assert lent_cpus() == 2
        assert codec_threads() == 3  # one more than the CPUs
    monkeypatch.setattr(ordered_jobs.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    with lend_cpus():
        assert codec_threads() == ordered_jobs.MAX_CODEC_THREADS
    monkeypatch.setattr(ordered_jobs.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    with lend_cpus():
        assert codec_threads() == 1
    assert codec_threads() == 1 and lent_cpus() == 1


# --- encoding through a descriptor -------------------------------------------------------------------


def _pillow_bytes(image: Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, **options)
    return buf.getvalue()


@pytest.mark.parametrize("ext", ["jpg", "png", "webp", "bmp"])
def test_encoding_through_the_scratch_file_gives_pillows_bytes(ext):
    pixels = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    options = {"jpg": {"format": "JPEG", "quality": 90, "subsampling": 0, "optimize": False},
               "png": {"format": "PNG"}, "webp": {"format": "WEBP", "quality": 90, "method": 4},
               "bmp": {"format": "BMP"}}[ext]
    small = Image.fromarray(pixels[:8, :8])
    expected = [_pillow_bytes(image, **options), _pillow_bytes(small, **options), _pillow_bytes(image, **options)]
    encode_three = lambda: [images.encode_image(im, ext, 90) for im in (image, small, image)]  # noqa: E731
    assert encode_three() == expected  # in the main thread: through a BytesIO
    with ThreadPoolExecutor(1) as pool:  # in a codec thread: through its scratch file, no tail of a larger one
        assert pool.submit(encode_three).result() == expected


def test_threads_encode_the_same_bytes_and_a_huge_image_does_not_stay_in_memory():
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(24)]
    serial = [images.encode_image(a, "jpg", 95) for a in arrays]
    jobs = (Job(images.encode_image, a, "jpg", 95) for a in arrays)
    assert list(in_order(jobs, threads=3)) == serial
    huge = np.zeros((2500, 2500, 3), dtype=np.uint8)  # an 18.75 MB BMP

    def encoded_then_scratch_size() -> tuple[int, int | None]:
        size = len(images.encode_image(huge, "bmp"))
        scratch = images._scratch_file()
        return size, (scratch.seek(0, io.SEEK_END) if scratch is not None else None)

    with ThreadPoolExecutor(1) as pool:  # the scratch file belongs to codec threads, not the main one
        size, left = pool.submit(encoded_then_scratch_size).result()
    assert size > images._SCRATCH_KEEP_BYTES
    assert left == (0 if hasattr(os, "memfd_create") else None)
    assert images._scratch_file() is None


# --- a poisoning run -----------------------------------------------------------------------------------


def test_codec_threads_change_no_byte_of_a_poisoning_run(tiny_shards, tmp_path, monkeypatch):
    recipe = parse_recipe({"seed": 5, "attacks": [
        {"attack": "badnets", "target": "red circle", "count": 40, "params": {"placement": "random", "pattern": "noise"}},
        {"attack": "wanet", "target": "blue star", "count": 30},
        {"attack": "text_trigger", "target": "green square", "count": 10, "params": {"dirty_label": True}},
    ]})
    one = tmp_path / "one"
    job = prepare_poisoning(tiny_shards, one, recipe)
    job.finalize([run_shard_task(task) for task in job.tasks()])  # no runner lent cores: one thread
    monkeypatch.setattr(ordered_jobs.os, "sched_getaffinity", lambda pid: set(range(3)), raising=False)
    encoded_in: set[str] = set()

    def recorded(*args: object, **kwargs: object) -> bytes:
        encoded_in.add(threading.current_thread().name)
        return images.encode_image(*args, **kwargs)

    captioned_in: set[str] = set()
    caption_poison = components.TextTrigger.poison

    def recorded_caption(self: components.TextTrigger, *args: object) -> object:
        captioned_in.add(threading.current_thread().name)
        return caption_poison(self, *args)

    monkeypatch.setattr(components, "encode_image", recorded)
    monkeypatch.setattr(components.TextTrigger, "poison", recorded_caption)
    threaded = tmp_path / "threaded"
    poison_local(tiny_shards, threaded, recipe)  # the in-process runner: 4 codec threads
    assert encoded_in and all(name.startswith("poisonlab-codec") for name in encoded_in)
    assert captioned_in == {threading.main_thread().name}  # a caption edit is not worth a thread
    assert files(one) == files(threaded)
