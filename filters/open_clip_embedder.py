"""The ``open_clip`` embedder: image and caption embeddings from any open_clip architecture.

The architecture is a name, a shipped config or a JSON file; weights come from an open_clip pretrained tag,
a safetensors (or weights-only torch) file, or a poisonlab run folder (``poisonlab.models.zoo`` refuses
anything that would need unpickling). The model is loaded in ``setup()``, once per worker process, on
CUDA when torch sees a GPU (fp16 autocast there) and on the CPU otherwise. With random weights
(``weights=None``) it is initialised from ``seed`` inside a forked torch RNG, so every worker builds the
same model and the global generator is left as it was.

torch and open_clip are imported only when a model is loaded: registering this embedder is cheap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from poisonlab.filters.embedders import EMBEDDERS, Decoded, ModelEmbedder
from poisonlab.filters.store import file_digest
from poisonlab.pipelines.registry import Params
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, decode_image

if TYPE_CHECKING:
    from poisonlab.models.pixels import ImageBytes


class OpenClipParams(Params):
    arch: str = Field(..., description="open_clip architecture name, a shipped config or a JSON file")
    weights: str | None = Field(None, description="pretrained tag, .safetensors / weights-only .pt file, or run folder")
    device: str | None = Field(None, description="cpu, cuda, cuda:1 (None: cuda when available)")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="auto: fp16 on CUDA, fp32 on CPU")
    seed: int = Field(0, description="initialisation of random weights")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="pixel cap checked before decoding an image")
    compile: bool = Field(False, description="torch.compile both encoders on their first batch (checked against "
                                             "eager): 10-35 s of compiling a process, floats differ from eager in the "
                                             "last bits; no gain measured in embed on a 2-core CPU")
    batch_size: int = Field(256, ge=1, description="the embed step's batch size (compiled encoders run batches of it)")


def weights_identity(weights: str | None, seed: int, arch: str = "") -> str:
    """What the weights are: a file's sha256, an open_clip tag, or random from a seed."""
    from poisonlab.models.zoo import ModelSpec

    path = ModelSpec(arch, weights).weights_file()
    if path is not None and path.exists():
        return "sha256:" + file_digest(path)
    return f"random:{seed}" if weights is None else f"tag:{weights}"


def _arch_identity(arch: str) -> str:
    from poisonlab.models.open_clip_dir import config_path, local_dir

    folder = local_dir(arch)
    path = config_path(folder) if folder is not None else Path(arch)
    return path.read_text() if path.suffix == ".json" and path.exists() else arch


_LOADED: dict[tuple, Any] = {}


@EMBEDDERS.register("open_clip", OpenClipParams, summary="open_clip image and caption embeddings (spaces image, text)")
class OpenClipEmbedder(ModelEmbedder):
    """Image and caption embeddings from one open_clip model."""

    spaces = ("image", "text")
    payload_space = "image"
    payload_extensions = IMAGE_EXTENSIONS
    concurrent_inputs = True  # Pillow decoding, tensor arithmetic and the tokenizer share nothing mutable
    decodes_in_processes = True  # decode reads only the params (the pixel cap); a PIL image pickles
    params: OpenClipParams

    def setup(self) -> None:
        """Load the model once per process (a per-process cache keyed by spec, device and seed)."""
        import torch

        from poisonlab.models.pixels import fast_pixels
        from poisonlab.models.tokens import TokenCache
        from poisonlab.models.zoo import ModelSpec, load_model

        if self.loaded is not None:
            return
        spec = ModelSpec(self.params.arch, self.params.weights)
        key = (spec, self.device, self.params.seed)
        if key not in _LOADED:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.params.seed)
                _LOADED[key] = load_model(spec, self.device)
        self.loaded = _LOADED[key]
        self._fast_pixels = fast_pixels(self.loaded.preprocess, self.loaded.image_size)
        self._lookup_on_device = self.device != "cpu"
        self.tokens = TokenCache(self.loaded.tokenizer, max_entries=50_000)
        self._autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self._precision())
        self._encoders = self._make_encoders()

    def _precision(self) -> str:
        precision = self.params.precision
        if precision == "auto":
            precision = "fp16" if self.device.startswith("cuda") else "fp32"
        return precision

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "precision": self._precision(), "compiled": self.params.compile,
                "max_pixels": self.params.max_pixels}

    def _make_encoders(self) -> dict[str, Any]:
        """Each space's encoder, compiled when asked (one compiled encoder per embedder, shared by its streams)."""
        from poisonlab.models.compiled import CompiledEncoder

        model = self.loaded.model
        encoders = {"image": model.encode_image, "text": model.encode_text}
        if not self.params.compile:
            return encoders
        return {space: CompiledEncoder(fn, self.params.batch_size) for space, fn in encoders.items()}

    def dims(self) -> dict[str, int]:
        self.setup()
        return {"image": self.loaded.embed_dim, "text": self.loaded.embed_dim}

    def decode(self, sample: Sample) -> Decoded:
        out = Decoded({})
        if sample.payload is None or not self.accepts(sample.payload_ext):
            out.missing.append(f"no_image: payload .{sample.payload_ext} is not an image")
        else:
            try:
                out.inputs["image"] = decode_image(sample.payload, self.params.max_pixels)
            except ImageError as exc:
                out.missing.append(str(exc))
        if sample.text and sample.text.strip():
            out.inputs["text"] = sample.text
        else:
            out.missing.append("no_caption")
        return out

    def _run(self, fn, batch) -> np.ndarray:  # type: ignore[no-untyped-def]
        import torch

        batch = batch.to(self.device)
        with torch.inference_mode():
            if self._autocast is not None:
                with torch.autocast(device_type=self.device.split(":")[0], dtype=self._autocast):
                    out = fn(batch)
            else:
                out = fn(batch)
            out = torch.nn.functional.normalize(out.float(), dim=-1)
        return out.cpu().numpy()

    def embed(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        return self.embed_prepared(self.prepare(batch))

    def prepare(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """Pixels and tokens: CPU work without the model (the embed step runs it ahead, in a thread)."""
        from poisonlab.models.pixels import batch_pixels

        self.setup()
        prepared: dict[str, Any] = {}
        if batch.get("image"):
            prepared["image"] = self._staged(batch["image"]) or batch_pixels(batch["image"], self.loaded.preprocess,
                                                                             self._fast_pixels)
        if batch.get("text"):
            prepared["text"] = self.tokens(list(batch["text"]))
        return prepared

    def _staged(self, images: Sequence[Any]) -> ImageBytes | None:
        """Bytes for the lookup on the model's accelerator (``ImageBytes``), where the batch allows the
        table lookup at all; None on the CPU, where the lookup runs here, in the reading thread."""
        fast = self._fast_pixels
        if not self._lookup_on_device or fast is None or not fast.accepts_all(images):
            return None
        return fast.image_bytes(images, pin=self.device.startswith("cuda"))

    def embed_prepared(self, prepared: Mapping[str, Any]) -> dict[str, np.ndarray]:
        self.setup()
        return {space: self._run(self._encoders[space], inputs) for space, inputs in prepared.items()}

    def identity(self) -> dict[str, Any]:
        return {"arch": _arch_identity(self.params.arch), "weights": weights_identity(self.params.weights, self.params.seed, self.params.arch)}

    def fingerprint(self) -> str:
        """The same string as before embedders were registered, so existing stores keep their folder."""
        ident = self.identity()
        return json.dumps([ident["arch"], ident["weights"]])

    def label(self) -> str:
        arch = Path(self.params.arch)
        if arch.suffix == ".json" and arch.exists():
            return str(json.loads(arch.read_text()).get("arch", arch.stem))
        return self.params.arch

    def details(self) -> dict[str, Any]:
        self.setup()
        return {"arch": self.params.arch, "weights": self.params.weights,
                "weights_digest": weights_identity(self.params.weights, self.params.seed, self.params.arch),
                "embed_dim": self.loaded.embed_dim, "image_size": self.loaded.image_size,
                "context_length": self.loaded.context_length}
