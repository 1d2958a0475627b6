"""The stage contract: an iterator of samples in, an iterator of samples out.

Heavy resources (a model, an index) are created in ``setup()``, once per worker process, not once per
shard. Stages declare what they need (a GPU, memory) so runners can place them. Stages only ever see
live samples through the helpers below; dropped or errored samples pass through untouched so the
writer can still account for them.
"""

from __future__ import annotations

import dataclasses
import pickle
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from poisonlab.pipelines.accounting import StageCounts, reason_category
from poisonlab.pipelines.sample import Sample, Status


@dataclasses.dataclass(frozen=True)
class Needs:
    """Resources a stage asks of the worker that runs it."""

    gpu: bool = False
    memory_gb: float = 0.0


@dataclasses.dataclass(frozen=True)
class ShardContext:
    """What a stage may know about the shard it is processing (for provenance, not for randomness)."""

    shard: str
    source: str | None = None


class Stage(ABC):
    """Base class of every stage. Subclasses set ``name`` and implement ``process``."""

    name: ClassVar[str] = "stage"
    needs: ClassVar[Needs] = Needs()

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load heavy resources once per worker (called by the executor before the first shard)."""

    @abstractmethod
    def process(self, samples: Iterator[Sample], ctx: ShardContext) -> Iterator[Sample]:
        """Transform the stream. Non-live samples must be yielded unchanged and in order."""

    def cache_token(self) -> bytes:
        """Identity of a configured stage, so a worker sets up an identical stage only once."""
        return pickle.dumps((type(self).__module__, type(self).__qualname__, self.__getstate__()))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class MapStage(Stage):
    """A stage that maps each live sample to a sample (changed, dropped or errored as it sees fit).

    Exceptions raised by ``map`` become an errored sample with the exception as its reason.
    """

    @abstractmethod
    def map(self, sample: Sample, ctx: ShardContext) -> Sample: ...

    def process(self, samples: Iterator[Sample], ctx: ShardContext) -> Iterator[Sample]:
        for sample in samples:
            if not sample.is_live:
                yield sample
                continue
            try:
                out = self.map(sample, ctx)
                if not isinstance(out, Sample):
                    raise TypeError(f"map returned {type(out).__name__}, not a Sample")
            except Exception as exc:  # one bad sample never stops the shard
                out = sample.errored(self.name, f"{type(exc).__name__}: {exc}")
            yield out


class FilterStage(MapStage):
    """A stage that drops samples: ``reject`` returns a reason to drop, or None to keep.

    A map whose only change is dropping, so live/dead handling and exceptions are ``MapStage``'s.
    """

    @abstractmethod
    def reject(self, sample: Sample, ctx: ShardContext) -> str | None: ...

    def map(self, sample: Sample, ctx: ShardContext) -> Sample:
        reason = self.reject(sample, ctx)
        return sample if reason is None else sample.dropped(self.name, reason)


class BatchMapStage(Stage):
    """A map stage over batches of live samples (for models); order and non-live samples are preserved."""

    batch_size: int = 64

    @abstractmethod
    def map_batch(self, batch: list[Sample], ctx: ShardContext) -> list[Sample]: ...

    def process(self, samples: Iterator[Sample], ctx: ShardContext) -> Iterator[Sample]:
        pending: list[Sample] = []  # live and non-live, in input order
        live: list[int] = []

        def flush() -> Iterator[Sample]:
            out = list(pending)
            if live:
                batch = [pending[i] for i in live]
                try:
                    mapped = list(self.map_batch(batch, ctx))
                    if len(mapped) != len(batch):
                        raise RuntimeError(f"map_batch returned {len(mapped)} samples for {len(batch)}")
                    if not all(isinstance(m, Sample) for m in mapped):
                        raise TypeError("map_batch returned something other than Samples")
                except Exception as exc:
                    mapped = [s.errored(self.name, f"{type(exc).__name__}: {exc}") for s in batch]
                for i, s in zip(live, mapped, strict=True):
                    out[i] = s
            pending.clear()
            live.clear()
            yield from out

        for sample in samples:
            if sample.is_live:
                live.append(len(pending))
            pending.append(sample)
            if len(live) >= self.batch_size:
                yield from flush()
        yield from flush()


class AccountingError(RuntimeError):
    """A stage lost, duplicated or invented samples: the shard is not committed."""


def run_counted(stage: Stage, samples: Iterator[Sample], ctx: ShardContext) -> tuple[Iterator[Sample], StageCounts]:
    """Run ``stage`` over ``samples`` and return its output stream plus counts filled as it is consumed.

    Live inputs are matched to outputs by key (a stage returns a new, frozen record), non-live inputs by
    identity (they must come back untouched), so duplicate keys and dead samples sharing a key with a
    live one are still told apart. Anything the stage did not return raises ``AccountingError`` when
    its stream ends, before a writer can commit the shard.
    """
    counts = StageCounts(stage=stage.name)
    live_in: dict[str, deque[int]] = {}  # key -> len(touched_by) of live inputs not yet returned
    dead_in: dict[int, Sample] = {}  # id -> non-live inputs not yet returned (held, so ids stay unique)

    def remember(stream: Iterator[Sample]) -> Iterator[Sample]:
        for s in stream:
            if s.is_live:
                live_in.setdefault(s.key, deque()).append(len(s.touched_by))
                counts.inputs += 1
            else:
                dead_in[id(s)] = s
            yield s

    def classify(stream: Iterator[Sample]) -> Iterator[Sample]:
        for s in stream:
            if not isinstance(s, Sample):
                raise AccountingError(f"stage {stage.name!r} yielded {type(s).__name__}, not a Sample")
            if dead_in.pop(id(s), None) is not None:  # a non-live sample passed through: not this stage's
                yield s
                continue
            pending = live_in.get(s.key)
            if not pending:  # created by this stage
                counts.added += 1
                yield s
                continue
            touched_before = pending.popleft()
            if not pending:
                del live_in[s.key]
            if s.status == Status.DROPPED.value:
                counts.dropped += 1
                counts.reasons[reason_category(s.reason or "unknown")] += 1
            elif not s.is_live:
                counts.errored += 1
                counts.reasons[reason_category(s.reason or "unknown")] += 1
            elif len(s.touched_by) > touched_before:
                counts.changed += 1
            else:
                counts.kept += 1
            yield s
        lost = [k for k, q in live_in.items() for _ in q] + [s.key for s in dead_in.values()]
        if lost:  # a stage swallowed samples: refuse to lose them silently
            raise AccountingError(f"stage {stage.name!r} lost {len(lost)} samples, e.g. {lost[0]!r}")

    return classify(stage.process(remember(samples), ctx)), counts


def chain_stages(
    stages: Iterable[Stage], samples: Iterator[Sample], ctx: ShardContext
) -> tuple[Iterator[Sample], list[StageCounts]]:
    """Compose stages lazily; the returned counts are complete once the stream is exhausted."""
    all_counts: list[StageCounts] = []
    stream = samples
    for stage in stages:
        stream, counts = run_counted(stage, stream, ctx)
        all_counts.append(counts)
    return stream, all_counts


def reasons_of(samples: Iterable[Sample]) -> Counter:
    return Counter(s.reason for s in samples if s.reason)


Transform = Callable[[Sample, ShardContext], Sample]
