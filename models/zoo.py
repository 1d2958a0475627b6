"""Create open_clip models by architecture name or JSON config, with weights from a safe source.

Weights come from an open_clip pretrained tag (machines with network, or its cache), a local checkpoint
(open_clip_train's ``epoch_N.pt`` too), a poisonlab training run folder or an open_clip ``local-dir:``
folder. Checkpoints come from strangers: only safetensors files, or torch files that load with
``weights_only=True``, are accepted; anything else is refused before it is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import load_file, save_file

from poisonlab.models import open_clip_dir
from poisonlab.models.errors import CheckpointError
from poisonlab.models.open_clip_dir import LOCAL_DIR, OPEN_CLIP_CONFIG
from poisonlab.models.pretrained import fetch_pretrained
from poisonlab.pipelines.registry import Params, get_registry
from poisonlab.shards.layout import atomic_path, atomic_write_text

CONFIG_DIR = Path(__file__).parent / "configs"
MODELS = get_registry("model")
CHECKPOINT_NAME = "model.safetensors"
CONFIG_NAME = "model_config.json"

__all__ = ["CheckpointError", "LoadedModel", "ModelSpec", "export_model_dir", "load_model", "save_checkpoint",
           "write_open_clip_config"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model: an open_clip architecture (name or JSON file) plus where its weights come from.

    ``arch`` is an architecture name, a JSON config or ``local-dir:DIR`` (open_clip's folder layout, whose
    weights are used when ``weights`` is None). ``weights`` is None (random init, unless ``arch`` is a
    local-dir folder with weights), an open_clip pretrained tag, a checkpoint file, or a folder of weights.
    """

    arch: str
    weights: str | None = None

    @classmethod
    def from_run(cls, run_dir: Path) -> ModelSpec:
        """A poisonlab run folder, or any open_clip ``local-dir:`` folder with weights (open_clip_config.json)."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise CheckpointError(f"run folder {run_dir} does not exist")
        cfg = run_dir / CONFIG_NAME
        if cfg.exists() and (run_dir / CHECKPOINT_NAME).exists():
            meta = json.loads(cfg.read_text())
            return cls(arch=str(cfg) if "model_cfg" in meta else meta["arch"], weights=str(run_dir))
        if (run_dir / OPEN_CLIP_CONFIG).is_file():
            if open_clip_dir.find_weights(run_dir) is None:
                raise CheckpointError(f"{run_dir} has {OPEN_CLIP_CONFIG} but no weights file")
            return cls(arch=LOCAL_DIR + str(run_dir), weights=str(run_dir))
        raise CheckpointError(f"{run_dir} is not a poisonlab run ({CONFIG_NAME} + {CHECKPOINT_NAME}) nor an "
                              f"open_clip local-dir folder ({OPEN_CLIP_CONFIG} + weights)")

    def weights_file(self) -> Path | None:
        """The local file the weights come from; None for random init or a pretrained tag (nothing fetched)."""
        if self.weights is None:
            folder = open_clip_dir.local_dir(self.arch)
            return open_clip_dir.find_weights(folder) if folder is not None and folder.is_dir() else None
        path = Path(self.weights)
        if path.is_dir():
            found = open_clip_dir.find_weights(path)
            if found is None:
                raise CheckpointError(f"no weights file (.safetensors, .pt, .pth, .bin) in {path}")
            return found
        if path.suffix in (*open_clip_dir.WEIGHT_SUFFIXES, ".ckpt") or path.exists():
            return path
        return None


def run_component(run_dir: Path, role: str) -> str | None:
    """The component a run folder records for a role (``model_config.json``'s ``embedder``, ``evaluator``:
    an adapter's run, e.g. a graph CLIP, names its own); None for an open_clip run or anything unreadable."""
    try:
        meta = json.loads((Path(run_dir) / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return None
    name = meta.get(role) if isinstance(meta, dict) else None
    return name if isinstance(name, str) and name else None


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


@dataclasses.dataclass(frozen=True)
class Architecture:
    """An architecture open_clip knows by ``name``, with the preprocessing its folder asks for (if any)."""

    name: str
    cfg: dict[str, Any]
    preprocess: dict[str, Any] = dataclasses.field(default_factory=dict)


def _resolve_arch(arch: str) -> Architecture:
    """An architecture name, a JSON model config, a run's model_config.json, or ``local-dir:DIR``."""
    register_builtin_configs()
    folder = open_clip_dir.local_dir(arch)
    if folder is not None:
        cfg, preprocess = open_clip_dir.read_config(folder)
        return Architecture(_registered(cfg, None), cfg, preprocess)
    path = Path(arch)
    if path.suffix == ".json" and path.exists():
        data = json.loads(path.read_text())
        cfg = data.get("model_cfg", data)
        name = data.get("arch") if "model_cfg" in data else path.stem
        return Architecture(_registered(cfg, name), cfg, data.get("preprocess_cfg") or {})
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise CheckpointError(f"unknown open_clip architecture {arch!r}; see `poisonlab components model`")
    return Architecture(arch, cfg)


def _registered(cfg: dict[str, Any], name: str | None) -> str:
    """``name`` when open_clip knows it with this very config, else a name derived from the config."""
    if name is not None and name in open_clip.list_models() and open_clip.get_model_config(name) == cfg:
        return name
    name = "poisonlab-custom-" + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    if name not in open_clip.list_models():
        _add_config(name, cfg)
    return name


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


class _RandomInitNotice(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" warning, and only it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")


@contextmanager
def _weights_follow(loaded_after: bool) -> Iterator[None]:
    """While creating a model whose weights are loaded right after, the random-init warning is untrue."""
    if not loaded_after:
        yield
        return
    notice = _RandomInitNotice()
    root = logging.getLogger()  # open_clip logs through the root logger
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def quiet_random_init() -> AbstractContextManager[None]:
    """Silence open_clip's random-init warning while building models whose weights the caller loads next
    (federated clients and the server build one per task from the global weights)."""
    return _weights_follow(True)


def _preprocess_kwargs(preprocess: dict[str, Any]) -> dict[str, Any]:
    """A local-dir folder's preprocessing, as create_model_and_transforms' overrides."""
    names = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
             "resize_mode": "image_resize_mode"}
    return {arg: tuple(preprocess[key]) if isinstance(preprocess[key], list) else preprocess[key]
            for key, arg in names.items() if preprocess.get(key) is not None}


def _load_weights(model: torch.nn.Module, weights_file: Path, arch: str) -> None:
    """Safe read, finite check, and every key and shape matching, or a one-line CheckpointError."""
    state = read_state_dict(weights_file)
    check_finite(state, weights_file)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same names, other shapes
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"checkpoint {weights_file} does not match architecture {arch}: {first}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {weights_file} does not match architecture {arch}: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def load_model(spec: ModelSpec, device: str | torch.device = "cpu") -> LoadedModel:
    """Build the architecture and load its weights; a mismatch between weights and architecture is an error."""
    arch = _resolve_arch(spec.arch)
    weights_file = spec.weights_file()
    tag = spec.weights if spec.weights and weights_file is None else None
    if tag is not None:
        fetch_pretrained(arch.name, tag)  # weights missing offline: one line, not open_clip's chained tracebacks
    with _weights_follow(weights_file is not None):
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch.name, pretrained=tag, device="cpu", **_preprocess_kwargs(arch.preprocess))
    if weights_file is not None:
        _load_weights(model, weights_file, arch.name)
    model = model.to(device).eval()
    cfg = arch.cfg
    image_size = cfg["vision_cfg"]["image_size"]
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(arch.name),
        arch=arch.name,
        embed_dim=int(cfg["embed_dim"]),
        image_size=int(image_size if isinstance(image_size, int) else image_size[0]),
        context_length=int(cfg.get("text_cfg", {}).get("context_length", 77)),
        model_cfg=cfg,
    )


def save_checkpoint(model: torch.nn.Module, run_dir: Path, arch: str, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors``, ``open_clip_config.json`` and ``model_config.json`` atomically (temp name,
    then rename; model_config.json last, as the proof of a whole checkpoint).

    The folder is open_clip's ``local-dir:`` layout too: ``open_clip.create_model('local-dir:RUN')`` and
    ``python -m open_clip_train.main --model local-dir:RUN`` load it without poisonlab.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = _resolve_arch(arch)
    name, cfg = resolved.name, resolved.cfg
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / CHECKPOINT_NAME) as tmp:
        save_file(state, str(tmp))
    write_open_clip_config(run_dir, cfg, open_clip.get_model_preprocess_cfg(model))
    meta = {"arch": name, "model_cfg": cfg, **(extra or {})}
    atomic_write_text(run_dir / CONFIG_NAME, json.dumps(meta, indent=2, sort_keys=True))
    return run_dir / CHECKPOINT_NAME


def write_open_clip_config(folder: Path, cfg: dict[str, Any], preprocess: dict[str, Any]) -> Path:
    """``folder/open_clip_config.json``: with it (and weights beside it) the folder is open_clip's ``local-dir:``."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(folder) / OPEN_CLIP_CONFIG, open_clip_dir.config_document(cfg, preprocess))
    return Path(folder) / OPEN_CLIP_CONFIG


def export_model_dir(spec: ModelSpec, out: Path) -> list[Path]:
    """An open_clip ``local-dir:`` folder for ``spec``: the config alone for an architecture without weights
    (open_clip_train then starts from random weights), the config and checked weights otherwise (also a
    poisonlab run folder). Returns the files written."""
    out = Path(out)
    if spec.weights is None and open_clip_dir.local_dir(spec.arch) is None:
        arch = _resolve_arch(spec.arch)
        return [write_open_clip_config(out, arch.cfg, arch.preprocess)]
    loaded = load_model(spec)
    save_checkpoint(loaded.model, out, spec.arch, extra={"exported_from": spec.weights or spec.arch})
    return [out / CHECKPOINT_NAME, out / OPEN_CLIP_CONFIG, out / CONFIG_NAME]


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
