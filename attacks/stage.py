"""The poisoning stage: apply the planned attacks to one shard, pass everything else through untouched.

Each shard task carries only its own share of the plan (a few keys) and the path of the run's
``attack.json``; the attacks themselves are rebuilt from that file once per worker process. Samples not
in the plan are yielded as they came (same bytes, never decoded). A planned sample whose image does not
decode is not poisoned: it leaves as an error with the reason, and the run's summary counts it. A
poisoned sample's source fields that the attack made stale (an img2dataset caption, hash or original size
in ``KEY.json``) are rewritten from what is written (``freshen``). Attacks that decode and re-encode
(``runs_codecs``) poison in codec threads where the runner lends CPUs, and every sample still leaves in the
order it came (``pipelines/ordered_jobs.py``): the same bytes with any number of threads.
"""

from __future__ import annotations

from collections.abc import Iterator

from poisonlab.attacks.base import STAGE, Attack, Binding
from poisonlab.attacks.freshen import freshen
from poisonlab.attacks.planner import ShardPlan
from poisonlab.attacks.spec import load_bindings
from poisonlab.pipelines.ordered_jobs import Job, codec_threads, in_order
from poisonlab.pipelines.sample import Sample
from poisonlab.pipelines.stage import ShardContext, Stage


class PoisonStage(Stage):
    name = STAGE

    def __init__(self, spec_path: str, run_id: str, plan: ShardPlan) -> None:
        self.spec_path = spec_path
        self.run_id = run_id
        self.plan = plan

    def setup(self) -> None:
        self._bindings = load_bindings(self.spec_path, self.run_id)

    def _bound(self, attack_id: str) -> tuple[Attack, Binding]:
        if not hasattr(self, "_bindings"):
            self.setup()
        return self._bindings[attack_id]

    def process(self, samples: Iterator[Sample], ctx: ShardContext) -> Iterator[Sample]:
        yield from in_order(self._jobs(samples), codec_threads())  # counted where the task runs
        for key, attack_id, index in self.plan.added:
            attack, binding = self._bound(attack_id)
            yield attack.make_added(key, index, binding)

    def _jobs(self, samples: Iterator[Sample]) -> Iterator[Sample | Job[Sample]]:
        """Each sample as it came, or a job poisoning it: the jobs decode and re-encode in codec threads."""
        planned = dict(self.plan.modified)
        for sample in samples:
            attack_id = planned.get(sample.key) if sample.is_live else None
            if attack_id is None:
                yield sample
                continue
            del planned[sample.key]  # a duplicate key later in the shard is not poisoned twice
            attack, binding = self._bound(attack_id)
            if attack.runs_codecs:
                yield Job(self._poisoned, sample, attack, binding)
            else:
                yield self._poisoned(sample, attack, binding)

    def _poisoned(self, sample: Sample, attack: Attack, binding: Binding) -> Sample:
        try:
            return freshen(sample, attack.poison(sample, binding))  # no stale caption or hash in KEY.json
        except Exception as exc:  # undecodable or oversized image: not poisoned, counted
            reason = str(exc) if ":" in str(exc) else f"{type(exc).__name__}: {exc}"
            return sample.errored(self.name, reason)
