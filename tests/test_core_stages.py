"""The stage contract and per-shard accounting, with stages that keep, change, drop, error and add."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from poisonlab.pipelines.accounting import SOURCE, ShardStats, StageCounts, reason_category
from poisonlab.pipelines.executor import ShardTask, prepared, run_local, run_shard_task
from poisonlab.pipelines.sample import Sample, Status
from poisonlab.pipelines.stage import (
    AccountingError,
    BatchMapStage,
    FilterStage,
    MapStage,
    ShardContext,
    Stage,
    chain_stages,
    run_counted,
)
from poisonlab.shards.plan import plan_source_tasks

CTX = ShardContext(shard="00000")


def samples(n: int, dead: tuple[int, ...] = ()) -> list[Sample]:
    """n samples with text payloads (the core never assumes images); indices in ``dead`` are errors."""
    out = []
    for i in range(n):
        s = Sample(key=f"k{i:03d}", payload=f"p{i}".encode(), payload_ext="bin", text=f"t{i}", meta={"i": i})
        out.append(s.errored("read", "broken: on purpose") if i in dead else s)
    return out


class Mixed(Stage):
    """Keeps k0, changes k1, drops k2, errors k3, adds one sample, keeps everything else."""

    name = "mixed"

    def process(self, stream: Iterator[Sample], ctx: ShardContext) -> Iterator[Sample]:
        for s in stream:
            if not s.is_live:
                yield s
            elif s.key == "k001":
                yield s.changed(self.name, text="new")
            elif s.key == "k002":
                yield s.dropped(self.name, "unwanted: too blue")
            elif s.key == "k003":
                yield s.errored(self.name, "exploded: badly")
            else:
                yield s
        yield Sample(key="new000", payload=b"x", payload_ext="bin", text="added", status=Status.ADDED.value)


def test_counts_keep_change_drop_error_add() -> None:
    stream, counts = run_counted(Mixed(), iter(samples(6, dead=(5,))), CTX)
    out = list(stream)
    assert [s.key for s in out] == ["k000", "k001", "k002", "k003", "k004", "k005", "new000"]
    assert (counts.inputs, counts.kept, counts.changed, counts.dropped, counts.errored, counts.added) == (5, 2, 1, 1, 1, 1)
    assert counts.balanced
    assert counts.reasons == {"mixed: unwanted": 1, "mixed: exploded": 1}
    assert out[5].reason == "read: broken: on purpose"  # the dead sample passed through untouched


class Swallow(Stage):
    name = "swallow"

    def process(self, stream: Iterator[Sample], ctx: ShardContext) -> Iterator[Sample]:
        for s in stream:
            if s.key != "k002":
                yield s


class SwallowDead(Stage):
    name = "swallow_dead"

    def process(self, stream: Iterator[Sample], ctx: ShardContext) -> Iterator[Sample]:
        yield from (s for s in stream if s.is_live)


@pytest.mark.parametrize("stage", [Swallow(), SwallowDead()], ids=["live", "dead"])
def test_a_stage_that_swallows_samples_raises(stage: Stage) -> None:
    stream, _ = run_counted(stage, iter(samples(4, dead=(1,))), CTX)
    with pytest.raises(AccountingError, match="lost 1 samples"):
        list(stream)


def test_duplicate_keys_and_a_dead_twin_are_told_apart() -> None:
    """A dead sample sharing its key with a live one is matched by identity, the live ones by key."""
    live = Sample(key="dup", payload=b"a", payload_ext="bin", text="a")
    twin = live.errored("read", "duplicate_key: 'dup'")
    again = Sample(key="dup", payload=b"b", payload_ext="bin", text="b")

    class Reverse(Stage):  # emits in reverse order: the dead twin now comes first
        name = "reverse"

        def process(self, stream, ctx):  # type: ignore[no-untyped-def]
            yield from reversed(list(stream))

    stream, counts = run_counted(Reverse(), iter([live, twin, again]), CTX)
    assert len(list(stream)) == 3
    assert (counts.inputs, counts.kept, counts.added, counts.errored) == (2, 2, 0, 0)


class Upper(MapStage):
    name = "upper"

    def map(self, sample: Sample, ctx: ShardContext) -> Sample:
        if sample.text == "t2":
            raise ValueError("cannot shout")
        if sample.text == "t3":
            return None  # type: ignore[return-value]  # a bug: must become an error, not a crash
        return sample.changed(self.name, text=sample.text.upper())


def test_map_stage_turns_exceptions_and_bad_returns_into_errors() -> None:
    stream, counts = run_counted(Upper(), iter(samples(5, dead=(4,))), CTX)
    out = list(stream)
    assert [s.status for s in out] == ["changed", "changed", "error", "error", "error"]
    assert out[2].reason == "upper: ValueError: cannot shout"
    assert "NoneType" in out[3].reason
    assert out[0].touched_by == ("upper",) and out[4].touched_by == ("read",)
    assert (counts.inputs, counts.changed, counts.errored) == (4, 2, 2) and counts.balanced


class Odd(FilterStage):
    name = "odd"

    def reject(self, sample: Sample, ctx: ShardContext) -> str | None:
        if sample.meta["i"] == 3:
            raise KeyError("no")
        return "even: rejected" if sample.meta["i"] % 2 == 0 else None


def test_filter_stage_drops_with_reasons_and_errors_on_exceptions() -> None:
    stream, counts = run_counted(Odd(), iter(samples(5)), CTX)
    out = list(stream)
    assert [s.status for s in out] == ["dropped", "ok", "dropped", "error", "dropped"]
    assert out[0].reason == "odd: even: rejected"
    assert (counts.kept, counts.dropped, counts.errored) == (1, 3, 1) and counts.balanced


class Tag(BatchMapStage):
    name = "tag"
    batch_size = 3

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def map_batch(self, batch: list[Sample], ctx: ShardContext) -> list[Sample]:
        self.batches.append([s.key for s in batch])
        if any(s.text == "t7" for s in batch):
            raise RuntimeError("batch failed")
        return [s.changed(self.name, text=f"{s.text}+") for s in batch]


def test_batch_map_preserves_order_with_dead_samples_in_between() -> None:
    stage = Tag()
    inputs = samples(10, dead=(1, 4, 5, 9))
    stream, counts = run_counted(stage, iter(inputs), CTX)
    out = list(stream)
    assert [s.key for s in out] == [s.key for s in inputs]
    assert all(o is i for o, i in zip(out, inputs, strict=True) if not i.is_live)  # dead ones untouched
    assert stage.batches == [["k000", "k002", "k003"], ["k006", "k007", "k008"]]
    assert [s.text for s in out if s.status == "changed"] == ["t0+", "t2+", "t3+"]
    assert {s.key for s in out if s.reason and s.reason.startswith("tag: RuntimeError")} == {"k006", "k007", "k008"}
    assert (counts.inputs, counts.changed, counts.errored) == (6, 3, 3) and counts.balanced


def test_batch_map_that_returns_the_wrong_number_errors_the_batch() -> None:
    class Short(BatchMapStage):
        name = "short"
        batch_size = 4

        def map_batch(self, batch, ctx):  # type: ignore[no-untyped-def]
            return batch[:-1]

    out = list(run_counted(Short(), iter(samples(3)), CTX)[0])
    assert all(s.status == "error" and "returned 2 samples for 3" in s.reason for s in out)


def test_chain_counts_each_stage() -> None:
    stream, counts = chain_stages([Mixed(), Upper()], iter(samples(6)), CTX)
    out = list(stream)
    assert [c.stage for c in counts] == ["mixed", "upper"]
    assert counts[1].inputs == 5  # the four live survivors of "mixed" and the sample it added
    assert counts[1].changed == 5 and all(c.balanced for c in counts)
    assert len(out) == 7 and out[-1].status == "added" and out[-1].text == "ADDED"


def test_reason_category_keeps_stage_and_kind() -> None:
    assert reason_category("read: caption_too_long: .txt is 1048580 bytes > 65536") == "read: caption_too_long"
    assert reason_category("read: refused_member: .pyd; missing_caption: no .txt") == "read: refused_member"
    assert reason_category("error") == "error"


# The executor: the books are checked before a sink commits.

class ListSink:
    def __init__(self) -> None:
        self.committed: dict[str, list[Sample]] = {}

    def __call__(self, shard, stream, counts, shard_errors):  # type: ignore[no-untyped-def]
        rows = list(stream)  # an AccountingError raised here means nothing is committed
        self.committed[shard] = rows
        stats = ShardStats(shard=shard, samples=len(rows), written=sum(s.is_live for s in rows), stages=counts)
        for s in rows:
            stats.by_status[s.status] += 1
        return stats


def _task(stages, sink, n=6, dead=(5,)) -> ShardTask:  # type: ignore[no-untyped-def]
    return ShardTask(shard="00000", source=lambda shard, errors: iter(samples(n, dead=dead)), stages=stages, sink=sink)


def test_executor_records_the_source_and_closes_the_books() -> None:
    sink = ListSink()
    result = run_shard_task(_task([Mixed()], sink))
    stats = result.stats
    assert not result.skipped and result.result is None
    assert [c.stage for c in stats.stages] == [SOURCE, "mixed"]
    source = stats.stages[0]
    assert (source.inputs, source.kept, source.errored) == (6, 5, 1)
    assert source.reasons == {"read: broken": 1}
    assert stats.expected_rows() == 7 == stats.samples
    assert stats.accounting_problems() == []


def test_executor_never_commits_a_shard_that_lost_samples() -> None:
    sink = ListSink()
    with pytest.raises(AccountingError):
        run_shard_task(_task([Swallow()], sink))
    assert sink.committed == {}


def test_accounting_problems_name_what_is_wrong() -> None:
    stats = ShardStats(shard="1", samples=3, stages=[StageCounts(SOURCE, inputs=4, kept=4), StageCounts("s", inputs=4, kept=3)])
    stats.by_status["ok"] = 3
    problems = stats.accounting_problems()
    assert any("stage 's'" in p for p in problems) and any("4 samples read or added, but 3 rows" in p for p in problems)


def test_setup_runs_once_per_identical_stage() -> None:
    class Heavy(MapStage):
        name = "heavy"
        setups = 0

        def __init__(self, level: int) -> None:
            self.level = level

        def setup(self) -> None:
            type(self).setups += 1
            self._model = object()  # heavy state: excluded from pickling and the cache token

        def map(self, sample, ctx):  # type: ignore[no-untyped-def]
            return sample

    a, b, c = Heavy(1), Heavy(1), Heavy(2)
    assert prepared(a) is prepared(b) is a
    prepared(c)
    assert Heavy.setups == 2
    assert "_model" not in a.__getstate__()


def test_rerun_skips_complete_shards(tmp_path: Path) -> None:
    from poisonlab.shards.synth import SynthSource, SynthSpec

    source = SynthSource(SynthSpec(samples=30, samples_per_shard=10))
    first = run_local(plan_source_tasks(source, source.shards(), tmp_path))
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    (tmp_path / "00001_stats.json").unlink()  # as if the run had died before shard 1 was committed
    seen: list[tuple[str, bool]] = []
    second = run_local(plan_source_tasks(source, source.shards(), tmp_path), lambda r: seen.append((r.stats.shard, r.skipped)))
    assert seen == [("00000", True), ("00001", False), ("00002", True)]
    assert [s.to_dict() for s in first] == [s.to_dict() for s in second]
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert after["00000.tar"] == before["00000.tar"] and after["00002.tar"] == before["00002.tar"]
