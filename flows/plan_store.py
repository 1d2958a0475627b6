"""Plans of the running flows, by id, in the driver process only.

Prefect ships the flow function to Dask workers and may pickle it by value, globals included; keeping
plans (stages, progress callbacks) in this separate module means the flow refers to them through a module
reference, which is always pickled by name, so nothing heavy or unpicklable travels with it.
"""

from __future__ import annotations

from typing import Any

_PLANS: dict[str, Any] = {}


def put(plan_id: str, plan: Any) -> None:
    _PLANS[plan_id] = plan


def get(plan_id: str) -> Any:
    return _PLANS[plan_id]


def discard(plan_id: str) -> None:
    _PLANS.pop(plan_id, None)
