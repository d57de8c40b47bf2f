"""The transformers backend: any image-text-to-text model of the Hugging Face ecosystem.

A model is anything ``AutoProcessor`` + ``AutoModelForImageTextToText`` load
(LLaVA-1.5, LLaVA-NeXT, Qwen2-VL / Qwen2.5-VL, SmolVLM, Idefics3, PaliGemma, ...),
given as a local directory or as a hub id that is in the local Hugging Face cache
(or, when HF_HUB_OFFLINE is not set, that can be downloaded).

Construction and ``identity()`` are cheap on purpose: the runner asks for the
identity before it knows whether anything is left to generate, and resuming a
finished run must not pay for loading weights. torch and transformers are
imported, and the weights loaded, on the first ``generate`` call.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cobra_eval.backends.base import BackendOptions, GenerationRequest
from cobra_eval.backends.loading import LazyLoad
from cobra_eval.config import GenerationParams
from cobra_eval.errors import BackendError
from cobra_eval.images import load_image

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")

#: Weight files up to this size are hashed in full for a local model's identity.
#: Bigger ones are hashed by name, size and their first and last SAMPLE_BYTES:
#: hashing a 15 GB checkpoint in full takes tens of seconds on every start, even
#: for resuming a finished run. The first megabyte of a safetensors file is its
#: header (every tensor's name, dtype, shape and offset) and the start of the data,
#: so a retrained, re-quantised or re-converted model changes the sample; only an
#: edit that keeps the size and both ends byte-identical would go unnoticed.
FULL_HASH_LIMIT = 2 * 1024**3
SAMPLE_BYTES = 1024**2
#: Small files that decide outputs besides the weights (config, generation config,
#: tokenizer, processor settings, chat template) are hashed into the identity too.
_SETTINGS_SUFFIXES = (".json", ".jinja", ".model", ".txt", ".tiktoken")
_SETTINGS_MAX_BYTES = 64 * 1024**2
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_ENV_TRUE = {"1", "ON", "YES", "TRUE"}


class HFBackend:
    """Generate with a transformers image-text-to-text model, a batch per ``generate`` call."""

    def __init__(self, options: BackendOptions):
        """Check the options and where the model is; loads nothing."""
        if not options.model:
            raise BackendError(
                "no model given: pass --model with a Hugging Face hub id "
                "(e.g. llava-hf/llava-1.5-7b-hf) or a local model directory"
            )
        device = options.device.lower()
        if device not in DEVICES and not device.startswith("cuda:"):
            raise BackendError(
                f"unknown device {options.device!r} (choose one of {', '.join(DEVICES)})"
            )
        dtype = options.dtype.lower()
        if dtype not in DTYPES:
            raise BackendError(
                f"unknown dtype {options.dtype!r} (choose one of {', '.join(DTYPES)})"
            )
        self.model = options.model
        self.device_option, self.dtype_option = device, dtype
        self.revision_option: str | None = options.extra.get("revision")
        self.directory = _local_directory(options.model)
        if self.directory is None:
            _check_hub_id(options.model)
        self._identity: dict[str, Any] | None = None
        self._model: LazyLoad[_Loaded] = LazyLoad(self._load_model)

    # -- identity ---------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """``{"name", "revision"}``: what decides the outputs, without loading any weights.

        A local directory is named by its folder name (moving the folder keeps the
        fingerprint) and identified by a hash of its weights and settings files. A
        hub id is identified by the commit of its cached snapshot; a model not in
        the cache is looked up on the hub (and then loaded at that commit), so that
        the first run and its resumes agree on the fingerprint.
        """
        if self._identity is None:
            if self.directory is not None:
                self._identity = {
                    "name": self.directory.name,
                    "revision": "sha256:" + _directory_digest(self.directory, self.model),
                }
            else:
                self._identity = {"name": self.model, "revision": self._hub_commit()}
        return dict(self._identity)

    def _hub_commit(self) -> str:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(self.model, "config.json", revision=self.revision_option)
        if isinstance(cached, str):
            # .../models--org--name/snapshots/<commit>/config.json
            return Path(cached).parent.name
        not_cached = (
            f"cannot load model {self.model!r}: not a local directory, and it is not in the "
            "local Hugging Face cache"
        )
        if _offline():
            raise BackendError(
                f"{not_cached} (HF_HUB_OFFLINE is set, so the hub was not asked; download it "
                "first, e.g. `hf download MODEL`, or pass a local directory)"
            )
        from huggingface_hub import HfApi

        try:
            info = HfApi().model_info(self.model, revision=self.revision_option, timeout=15)
        except Exception as exc:  # offline, unknown repo, gated, ...: all mean "cannot load"
            raise BackendError(
                f"{not_cached} (offline?), and asking the Hugging Face Hub failed: "
                f"{_first_line(exc)}"
            ) from None
        if not info.sha:
            raise BackendError(f"{not_cached}, and the hub gave no commit for it")
        return info.sha

    # -- generation -------------------------------------------------------------------------

    def generate(
        self, requests: Sequence[GenerationRequest], params: GenerationParams
    ) -> list[str]:
        """One caption per request, from ONE batched ``model.generate`` call.

        Prompts are left-padded so every row's new tokens start at the same
        column; greedy outputs therefore equal those of one-at-a-time calls. An
        unreadable image raises ImageError for the whole batch (the runner then
        retries the requests one by one).
        """
        if not requests:
            return []
        loaded = self._model.get()
        import torch

        images = [load_image(r.image_path) for r in requests]
        texts = [loaded.render(r.prompt) for r in requests]
        inputs = loaded.processor(
            images=[[image] for image in images], text=texts, return_tensors="pt", padding=True
        )
        inputs = inputs.to(loaded.device, dtype=loaded.dtype)
        torch.manual_seed(params.seed)
        with torch.inference_mode():
            output = loaded.model.generate(**inputs, **loaded.generation_kwargs(params))
        if not loaded.model.config.is_encoder_decoder:
            # decoder-only models return prompt + continuation; left padding aligns the prompts
            output = output[:, inputs["input_ids"].shape[1] :]
        decoded = loaded.processor.batch_decode(output, skip_special_tokens=True)
        return [text.strip() for text in decoded]

    # -- loading ----------------------------------------------------------------------------

    def _load_model(self) -> _Loaded:
        import torch

        device = _resolve_device(self.device_option, torch)
        dtype = _resolve_dtype(self.dtype_option, device, torch)
        if self.directory is not None:
            try:
                model, processor = _from_pretrained(
                    str(self.directory), dtype=dtype, local_files_only=True
                )
            except _Unsupported as exc:
                raise BackendError(f"cannot load model {self.model!r}: {exc}") from None
            except Exception as exc:  # a broken folder can fail in many ways; say which
                raise BackendError(
                    f"cannot load model {self.model!r} from the local directory "
                    f"{self.directory}: {_first_line(exc)}"
                ) from None
        else:
            model, processor = self._load_hub(dtype)
        try:
            model = model.to(device).eval()
        except RuntimeError as exc:  # out of memory, most likely: retrying per sample won't help
            raise BackendError(
                f"cannot move model {self.model!r} to {device}: {_first_line(exc)}"
            ) from None
        return _Loaded(model, processor, device, dtype)

    def _load_hub(self, dtype: torch.dtype) -> tuple[Any, Any]:
        # pinned to the commit identity() reported, so the fingerprint names what runs
        revision = self.identity()["revision"]
        try:
            return _from_pretrained(
                self.model, dtype=dtype, local_files_only=True, revision=revision
            )
        except _Unsupported as exc:
            raise BackendError(f"cannot load model {self.model!r}: {exc}") from None
        except OSError as exc:
            local_error = exc  # partly cached, or not at all: the hub may have the rest
        except Exception as exc:
            raise BackendError(
                f"cannot load model {self.model!r} from the local Hugging Face cache: "
                f"{_first_line(exc)}"
            ) from None
        not_cached = (
            f"cannot load model {self.model!r}: not a local directory, and it is not "
            f"(completely) in the local Hugging Face cache ({_first_line(local_error)})"
        )
        if _offline():
            raise BackendError(f"{not_cached}; HF_HUB_OFFLINE is set, so the hub was not asked")
        try:
            return _from_pretrained(
                self.model, dtype=dtype, local_files_only=False, revision=revision
            )
        except _Unsupported as exc:
            raise BackendError(f"cannot load model {self.model!r}: {exc}") from None
        except Exception as exc:  # network, auth, disk: report it with what was tried
            raise BackendError(
                f"{not_cached}, and downloading it failed (offline?): {_first_line(exc)}"
            ) from None


class _Loaded:
    """A loaded model with its processor, device and dtype."""

    def __init__(self, model: Any, processor: Any, device: torch.device, dtype: torch.dtype):
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                # Llama-style tokenizers have no pad token; any token works under the mask
                tokenizer.pad_token = tokenizer.eos_token
        self.pad_token_id = getattr(tokenizer, "pad_token_id", None)
        self.chat_template = getattr(processor, "chat_template", None) or getattr(
            tokenizer, "chat_template", None
        )

    def render(self, prompt: str) -> str:
        """The prompt in the model's chat format, with one image before the text."""
        if not self.chat_template:
            # e.g. PaliGemma: no chat format, its processor puts the image tokens in itself
            return prompt
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        rendered = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return rendered if isinstance(rendered, str) else rendered[0]

    def generation_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        """Arguments for ``model.generate``: greedy at temperature 0, else nucleus sampling.

        The decoding strategy is ours (GenerationParams is in the fingerprint); the rest
        of the model's generation_config (stop tokens, repetition penalty, suppressed
        tokens) still applies, as the model's authors meant it to.
        """
        # a model's generation_config may ask for beams or carry its own sampling
        # defaults (chat models often ship top_k): knobs GenerationParams lacks are off
        kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "num_beams": 1}
        if params.temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=None
            )
        if self.model.generation_config.pad_token_id is None and self.pad_token_id is not None:
            kwargs["pad_token_id"] = self.pad_token_id
        return kwargs


class _Unsupported(Exception):
    """The folder holds a model, but not one AutoModelForImageTextToText can load."""


def _from_pretrained(
    source: str, *, dtype: torch.dtype, local_files_only: bool, revision: str | None = None
) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    # the run's own lines and progress bar are the output; a weights-loading bar is noise
    hf_logging.disable_progress_bar()
    common: dict[str, Any] = {"local_files_only": local_files_only, "revision": revision}
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except ValueError as exc:  # no or unknown model_type
        raise _Unsupported(_first_line(exc)) from None
    if type(config) not in AutoModelForImageTextToText._model_mapping:
        architectures = ", ".join(getattr(config, "architectures", None) or []) or "unnamed"
        raise _Unsupported(
            f"its architecture (model_type {config.model_type!r}, {architectures}) is not one "
            "that AutoModelForImageTextToText knows: this backend needs an image-text-to-text "
            "model such as LLaVA, Qwen2-VL, Idefics3/SmolVLM or PaliGemma"
        )
    processor = AutoProcessor.from_pretrained(source, **common)
    # loaded on the CPU and moved afterwards: device_map= would need accelerate
    model = AutoModelForImageTextToText.from_pretrained(
        source, config=config, dtype=dtype, **common
    )
    return model, processor


# -- where the model is --------------------------------------------------------------------


def _local_directory(model: str) -> Path | None:
    """The model's directory if ``model`` names a local folder; raise if it is a broken one."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackendError(
                f"cannot load model {model!r}: the directory {path.resolve()} has no config.json "
                "(a transformers model folder, as save_pretrained() writes it, has one)"
            )
        return path.resolve()
    if path.exists():
        raise BackendError(
            f"cannot load model {model!r}: {path.resolve()} is a file, not a model directory"
        )
    if _looks_like_path(model):
        raise BackendError(
            f"cannot load model {model!r}: there is no directory {path.resolve()} "
            "(and it is not a Hugging Face hub id either)"
        )
    return None


def _looks_like_path(model: str) -> bool:
    # hub ids are "name" or "org/name"; anything else with slashes is meant as a path
    return (
        model.startswith((".", "~", "/"))
        or "\\" in model
        or model.count("/") > 1
        or Path(model).is_absolute()
    )


def _check_hub_id(model: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError as exc:
        raise BackendError(
            f"cannot load model {model!r}: it is not a local directory, and not a valid "
            f"Hugging Face hub id ({_first_line(exc)})"
        ) from None


def _offline() -> bool:
    from huggingface_hub import constants

    # the hub library reads the variables once at import; a later setting counts too
    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper()
    return env in _ENV_TRUE or bool(constants.HF_HUB_OFFLINE)


# -- identity of a local directory ---------------------------------------------------------


def _directory_digest(directory: Path, model: str) -> str:
    """sha256 over the weights (sampled when huge) and the small settings files."""
    digest = hashlib.sha256()
    weights = _weight_files(directory)
    if not weights:
        raise BackendError(
            f"cannot load model {model!r}: the directory {directory} has no weights "
            "(model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin)"
        )
    for path, full in weights:
        _hash_file(digest, path, full)
    for path in sorted(directory.iterdir()):
        if (
            path.is_file()
            and path.suffix in _SETTINGS_SUFFIXES
            and path.name not in _WEIGHT_INDEXES
            and path.stat().st_size <= _SETTINGS_MAX_BYTES
        ):
            _hash_file(digest, path, full=True)
    return digest.hexdigest()


def _weight_files(directory: Path) -> list[tuple[Path, bool]]:
    """The weight files of a model folder, each with whether to hash it in full."""
    for index_name in _WEIGHT_INDEXES:
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text()).get("weight_map", {})
            except (ValueError, AttributeError) as exc:
                raise BackendError(f"{index}: not a readable weights index ({exc})") from None
            shards = [directory / name for name in sorted(set(weight_map.values()))]
            # the index names every tensor; a sharded model is a big one, so its shards
            # are only sampled: reading them in full would make every start slow
            return [(index, True), *((s, False) for s in shards if s.is_file())]
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
    return [(f, f.stat().st_size <= FULL_HASH_LIMIT) for f in files]


def _hash_file(digest: Any, path: Path, full: bool) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}\0{size}\0".encode())
    with path.open("rb") as handle:
        if full:
            for block in iter(lambda: handle.read(SAMPLE_BYTES), b""):
                digest.update(block)
        else:
            digest.update(handle.read(SAMPLE_BYTES))
            handle.seek(max(size - SAMPLE_BYTES, 0))
            digest.update(handle.read(SAMPLE_BYTES))


# -- device and dtype ----------------------------------------------------------------------


def _resolve_device(option: str, torch: Any) -> torch.device:
    if option == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if option.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(f"--device {option}: CUDA is not available to this PyTorch build")
    if option == "mps" and not torch.backends.mps.is_available():
        raise BackendError("--device mps: MPS is not available on this machine")
    return torch.device(option)


def _resolve_dtype(option: str, device: torch.device, torch: Any) -> torch.dtype:
    if option == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[option]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
