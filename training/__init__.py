"""Training on shards (a loop, registered objectives, run folders) and the evaluations that tell whether a
backdoor was learned or removed.

    from poisonlab.training import TrainSettings, train_run, evaluate_run
    train_run("poisoned/", "runs/victim", TrainSettings(epochs=5))
    evaluate_run("runs/victim", "data/eval", attack_from="poisoned/")

    state, stats = local_update(None, "client0/", TrainSettings(epochs=1), steps=50)  # no run folder
"""

from poisonlab.training.config import TrainSettings
from poisonlab.training.eval_data import EvalError
from poisonlab.training.evaluation import evaluate_run, evaluate_run_attacks, format_evaluation, headline
from poisonlab.training.loop import UpdateStats, init_state, local_update
from poisonlab.training.objectives import OBJECTIVES, Built, LossOutput, TrainingObjective
from poisonlab.training.state import Progress, TrainState
from poisonlab.training.trainer import TrainResult
from poisonlab.training.trainer import train as train_run

__all__ = ["OBJECTIVES", "Built", "EvalError", "LossOutput", "Progress", "TrainResult", "TrainSettings",
           "TrainState", "TrainingObjective", "UpdateStats", "evaluate_run", "evaluate_run_attacks",
           "format_evaluation", "headline",
           "init_state", "local_update", "train_run"]
