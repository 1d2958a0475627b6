"""The open_clip model zoo as poisonlab uses it: architectures by name or JSON, weights from safe files."""

from poisonlab.models.zoo import LoadedModel, ModelSpec, load_model, save_checkpoint

__all__ = ["LoadedModel", "ModelSpec", "load_model", "save_checkpoint"]
