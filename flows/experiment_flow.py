"""The Prefect flow of an experiment: one task per step, run in order (each needs the one before).

Like the shard flow, the experiment itself stays in ``plan_store`` in the driver and the flow receives
only its id, so Prefect never serialises recipes, models or runners into its database.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from poisonlab.flows import logs, plan_store, prefect_api
from poisonlab.flows.experiment import Experiment
from poisonlab.flows.runtime import check_prefect_environment


@task(name="experiment-step", cache_policy=NO_CACHE)
def experiment_step(plan_id: str, name: str) -> dict[str, Any]:
    experiment: Experiment = plan_store.get(plan_id)
    return experiment.run_step(name)


@flow(name="poisonlab-experiment", validate_parameters=False)
def experiment_flow(plan_id: str, names: list[str]) -> dict[str, dict[str, Any]]:
    return {name: experiment_step.with_options(name=f"step-{name}")(plan_id, name) for name in names}


def run_experiment_flow(experiment: Experiment, names: list[str]) -> dict[str, dict[str, Any]]:
    check_prefect_environment()
    logs.configure(verbose=experiment.runner.verbose, quiet=experiment.runner.quiet)
    plan_id = uuid.uuid4().hex
    plan_store.put(plan_id, experiment)
    try:
        label = re.sub(r"[^a-z0-9-]+", "-", experiment.spec.name.lower()).strip("-")
        with prefect_api.api_server(quiet=experiment.runner.quiet):
            return experiment_flow.with_options(name=f"poisonlab-experiment-{label}")(plan_id, names)
    finally:
        plan_store.discard(plan_id)
