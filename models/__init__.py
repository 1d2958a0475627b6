"""The open_clip model zoo as poisonlab uses it: architectures by name, JSON or open_clip ``local-dir:`` folder,
weights from safe files (run folders are open_clip ``local-dir:`` folders too)."""

from poisonlab.models.errors import CheckpointError
from poisonlab.models.zoo import LoadedModel, ModelSpec, load_model, save_checkpoint, write_open_clip_config

__all__ = ["CheckpointError", "LoadedModel", "ModelSpec", "load_model", "save_checkpoint", "write_open_clip_config"]
