"""Create open_clip models by architecture name or JSON config, with weights from a safe source.

Weights come from an open_clip pretrained tag (machines with network), a local checkpoint, or a poisonlab
training run folder. Checkpoints come from strangers: only safetensors files, or torch files that load
with ``weights_only=True``, are accepted; anything else is refused before it is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import load_file, save_file

from poisonlab.pipelines.registry import Params, get_registry
from poisonlab.shards.layout import atomic_path, atomic_write_text

CONFIG_DIR = Path(__file__).parent / "configs"
MODELS = get_registry("model")
CHECKPOINT_NAME = "model.safetensors"
CONFIG_NAME = "model_config.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, of a refused format, or does not match the architecture."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model: an open_clip architecture (name or JSON file) plus where its weights come from.

    ``weights`` is None (random init), an open_clip pretrained tag, a checkpoint file, or a run folder
    (holding ``model.safetensors`` and ``model_config.json``).
    """

    arch: str
    weights: str | None = None

    @classmethod
    def from_run(cls, run_dir: Path) -> ModelSpec:
        run_dir = Path(run_dir)
        cfg = run_dir / CONFIG_NAME
        if not cfg.exists() or not (run_dir / CHECKPOINT_NAME).exists():
            raise CheckpointError(f"{run_dir} is not a poisonlab run: {CONFIG_NAME} or {CHECKPOINT_NAME} missing")
        meta = json.loads(cfg.read_text())
        return cls(arch=str(run_dir / CONFIG_NAME) if "model_cfg" in meta else meta["arch"], weights=str(run_dir))


@dataclasses.dataclass
class LoadedModel:
    """A model ready for inference, with the matching preprocessing and tokenizer."""

    model: torch.nn.Module
    preprocess: Any
    tokenizer: Any
    arch: str
    embed_dim: int
    image_size: int
    context_length: int
    model_cfg: dict[str, Any]


def register_builtin_configs() -> None:
    """Make the shipped JSON configs (tiny CLIPs for CPUs) known to open_clip by name."""
    for path in sorted(CONFIG_DIR.glob("*.json")):
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)


def _resolve_arch(arch: str) -> tuple[str, dict[str, Any]]:
    """An architecture name, a JSON file of a model config, or a poisonlab run's model_config.json."""
    register_builtin_configs()
    path = Path(arch)
    if path.suffix == ".json" and path.exists():
        data = json.loads(path.read_text())
        cfg = data.get("model_cfg", data)
        name = data.get("arch") if "model_cfg" in data else path.stem
        if name not in open_clip.list_models() or open_clip.get_model_config(name) != cfg:
            name = "poisonlab-custom-" + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
            _add_config(name, cfg)
        return name, cfg
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise CheckpointError(f"unknown open_clip architecture {arch!r}; see `poisonlab components model`")
    return arch, cfg


def _add_config(name: str, cfg: dict[str, Any]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / f"{name}.json"
        p.write_text(json.dumps(cfg))
        open_clip.add_model_config(p)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load weights without ever unpickling arbitrary objects."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # a pickle or any other file renamed .safetensors: refused, never unpickled
            raise CheckpointError(f"refused {path}: not a valid safetensors file ({type(exc).__name__})") from None
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"refused {path}: not loadable with weights_only=True ({exc})") from exc
        if isinstance(obj, dict) and "state_dict" in obj:
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CheckpointError(f"refused {path}: not a state dict")
        return {k.removeprefix("module."): v for k, v in obj.items()}
    raise CheckpointError(f"refused {path}: only .safetensors or weights-only torch files are accepted")


def check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """NaN or infinite weights (a diverged run) would crash evaluation deep in scikit-learn: refuse them here."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"checkpoint {path}: the model's weights are not finite (NaN or inf in {bad[0]!r})")


def _weights_file(weights: str) -> Path | None:
    path = Path(weights)
    if path.is_dir():
        return path / CHECKPOINT_NAME
    if path.suffix in (".safetensors", ".pt", ".pth", ".bin", ".ckpt") or path.exists():
        return path
    return None


def load_model(spec: ModelSpec, device: str | torch.device = "cpu") -> LoadedModel:
    """Build the architecture and load its weights; a mismatch between weights and architecture is an error."""
    name, cfg = _resolve_arch(spec.arch)
    pretrained = None
    weights_file = _weights_file(spec.weights) if spec.weights else None
    if spec.weights and weights_file is None:
        pretrained = spec.weights  # an open_clip pretrained tag (needs network or a local cache)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device="cpu")
    if weights_file is not None:
        state = read_state_dict(weights_file)
        check_finite(state, weights_file)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # same names, other shapes
            first = str(exc).strip().splitlines()[-1].strip()
            raise CheckpointError(f"checkpoint {weights_file} does not match architecture {name}: {first}") from None
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {weights_file} does not match architecture {name}: "
                f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
    model = model.to(device).eval()
    image_size = cfg["vision_cfg"]["image_size"]
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(name),
        arch=name,
        embed_dim=int(cfg["embed_dim"]),
        image_size=int(image_size if isinstance(image_size, int) else image_size[0]),
        context_length=int(cfg.get("text_cfg", {}).get("context_length", 77)),
        model_cfg=cfg,
    )


def save_checkpoint(model: torch.nn.Module, run_dir: Path, arch: str, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``model_config.json`` atomically (temp name, then rename)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name, cfg = _resolve_arch(arch)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / CHECKPOINT_NAME) as tmp:
        save_file(state, str(tmp))
    meta = {"arch": name, "model_cfg": cfg, **(extra or {})}
    atomic_write_text(run_dir / CONFIG_NAME, json.dumps(meta, indent=2, sort_keys=True))
    return run_dir / CHECKPOINT_NAME


class ModelParams(Params):
    pass


def _register_shipped() -> None:
    for path in sorted(CONFIG_DIR.glob("*.json")):
        cfg = json.loads(path.read_text())
        summary = (f"shipped CPU config: {cfg['vision_cfg']['image_size']}px, vision {cfg['vision_cfg']['layers']}x"
                   f"{cfg['vision_cfg']['width']}, text {cfg['text_cfg']['layers']}x{cfg['text_cfg']['width']}, "
                   f"embed {cfg['embed_dim']}")
        MODELS.register(path.stem, ModelParams, summary=summary)(lambda params, _p=path: ModelSpec(arch=_p.stem))


_register_shipped()
