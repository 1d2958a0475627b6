"""CLIP pretraining on shards and the evaluations that tell whether a backdoor was learned or removed.

    from poisonlab.training import TrainSettings, train_run, evaluate_run
    train_run("poisoned/", "runs/victim", TrainSettings(epochs=5))
    evaluate_run("runs/victim", "data/eval", attack_from="poisoned/")
"""

from poisonlab.training.config import TrainSettings
from poisonlab.training.eval_data import EvalError
from poisonlab.training.evaluation import evaluate_run, format_evaluation, headline
from poisonlab.training.trainer import TrainResult
from poisonlab.training.trainer import train as train_run

__all__ = ["EvalError", "TrainResult", "TrainSettings", "evaluate_run", "format_evaluation", "headline", "train_run"]
