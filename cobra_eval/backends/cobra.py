"""The Cobra backend: Mamba-based vision-language models of the Cobra package (``--backend cobra``).

Cobra (https://github.com/h-zhao1997/cobra; distribution ``cobra-vlm``, imported as
``cobra``) loads a model by its id (``cobra+3b``, downloaded from the Hugging Face Hub)
or from a local training run directory (``config.json`` and
``checkpoints/latest-checkpoint.pt``). It needs CUDA and the ``mamba-ssm`` kernels.

Like the transformers backend, construction and ``identity()`` are cheap: resuming a
finished run must not pay for loading weights. The package is imported, and the model
loaded, on the first ``generate`` call. Cobra generates one image at a time, so a batch
is a loop; each request is seeded on its own, so a sample's text does not depend on the
batch it happened to be in (or on which of its neighbours came from the cache).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from cobra_eval.backends.base import BackendOptions, GenerationRequest
from cobra_eval.backends.loading import LazyLoad
from cobra_eval.config import GenerationParams
from cobra_eval.errors import BackendError
from cobra_eval.images import ImageError, load_image

#: The Cobra model id of the project's README, shown wherever a user must pick one.
EXAMPLE_MODEL = "cobra+3b"
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: How to install the package. Its README installs from the repository; ``pip install
#: cobra`` would bring COBRApy, a metabolic-modelling package with the same import name.
INSTALL = (
    "pip install git+https://github.com/h-zhao1997/cobra mamba-ssm causal-conv1d "
    "(it needs CUDA; `pip install cobra` is COBRApy, an unrelated package)"
)
#: The files ``cobra.load`` reads from a local run directory.
RUN_CONFIG = "config.json"
RUN_CHECKPOINT = Path("checkpoints") / "latest-checkpoint.pt"
#: A checkpoint is identified by its size and its first and last SAMPLE_BYTES: a 3B
#: checkpoint is ~6 GB, and hashing it in full would slow every start, even a resume
#: of a finished run. Its first megabyte holds the pickle's tensor index.
SAMPLE_BYTES = 1024**2


class CobraBackend:
    """Generate with a Cobra VLM, one image per ``vlm.generate`` call."""

    def __init__(self, options: BackendOptions):
        """Check the options, where the model is, and that the package is installed."""
        if options.model in (None, "", "demo"):
            raise BackendError(
                "the cobra backend needs --model: a Cobra model id "
                f"(e.g. --model {EXAMPLE_MODEL}) or a local Cobra run directory "
                "('demo' is the transformers backend's bundled model)"
            )
        device = options.device.lower()
        if device not in DEVICES and not device.startswith("cuda:"):
            raise BackendError(
                f"unknown device {options.device!r} for the cobra backend "
                f"(choose one of {', '.join(DEVICES)}; Cobra's Mamba kernels need CUDA)"
            )
        dtype = options.dtype.lower()
        if dtype not in DTYPES:
            raise BackendError(
                f"unknown dtype {options.dtype!r} (choose one of {', '.join(DTYPES)})"
            )
        self.model: str = options.model
        self.device_option, self.dtype_option = device, dtype
        self.directory = _run_directory(self.model)
        # find_spec imports nothing, and failing here stops the run before it is recorded
        if importlib.util.find_spec("cobra") is None:
            raise BackendError(_missing_package())
        self._identity: dict[str, Any] | None = None
        self._model: LazyLoad[_Loaded] = LazyLoad(self._load_model)

    def identity(self) -> dict[str, Any]:
        """``{"name", "revision"}`` without importing Cobra or reading the whole checkpoint.

        A run directory is named by its folder name (moving it keeps the fingerprint)
        and identified by a hash of its config.json and a sample of its checkpoint. A
        model id is identified by itself: Cobra downloads the newest files of its hub
        repository and takes no revision to pin.
        """
        if self._identity is None:
            if self.directory is not None:
                self._identity = {
                    "name": self.directory.name,
                    "revision": "sha256:" + _run_digest(self.directory),
                }
            else:
                self._identity = {"name": self.model, "revision": "hub:latest"}
        return dict(self._identity)

    def generate(
        self, requests: Sequence[GenerationRequest], params: GenerationParams
    ) -> list[str | Exception]:
        """One caption per request, in order; an unreadable image is answered by its error."""
        if not requests:
            return []
        loaded = self._model.get()
        kwargs = generation_kwargs(params)
        return [loaded.answer(request, params.seed, kwargs) for request in requests]

    def _load_model(self) -> _Loaded:
        cobra = _import_cobra()
        torch = _optional_torch()
        device, dtype = _placement(self.device_option, self.dtype_option, torch)
        token = os.environ.get("HF_TOKEN") or None
        if self.directory is not None:
            source, where = str(self.directory), f"from the run directory {self.directory}"
        else:
            source, where = self.model, "by its id (from the Hugging Face Hub or its cache)"
        try:
            vlm = cobra.load(source, hf_token=token)
        except Exception as exc:  # unknown id, broken run directory, offline, gated: say which
            known = _known_ids(cobra)
            hint = f" (known ids: {', '.join(known)})" if known and self.directory is None else ""
            raise BackendError(
                f"cannot load Cobra model {self.model!r} {where}: {_first_line(exc, token)}{hint}"
            ) from None
        try:
            # nn.Module.to moves the module's weights in place
            if dtype is None:
                vlm.to(device)
            else:
                vlm.to(device, dtype=dtype)
        except Exception as exc:  # out of memory, most likely: retrying per sample won't help
            raise BackendError(
                f"cannot move Cobra model {self.model!r} to {device} ({dtype}): "
                f"{_first_line(exc, token)}"
            ) from None
        return _Loaded(vlm, torch)


class _Loaded:
    """A loaded Cobra VLM and the torch module that seeds it (None without PyTorch)."""

    def __init__(self, vlm: Any, torch: ModuleType | None):
        self.vlm, self.torch = vlm, torch

    def render(self, prompt: str) -> str:
        """The prompt in the model's own chat format (Cobra's Mamba builder: 'In: ...\\nOut: ')."""
        # a builder accumulates turns: every request starts a conversation of its own
        builder = self.vlm.get_prompt_builder()
        builder.add_turn(role="human", message=prompt)
        return str(builder.get_prompt())

    def answer(
        self, request: GenerationRequest, seed: int, kwargs: dict[str, Any]
    ) -> str | Exception:
        """The stripped text for one request, or the exception that failed it alone."""
        try:
            image = load_image(request.image_path)
        except ImageError as exc:
            return exc
        prompt_text = self.render(request.prompt)
        if self.torch is not None:
            self.torch.manual_seed(seed)
        try:
            text = self.vlm.generate(image, prompt_text, **kwargs)
        except TypeError as exc:
            # arguments this Cobra does not take fail every sample alike: stop the run
            raise BackendError(
                f"Cobra's generate() refused the arguments {sorted(kwargs)}: {_first_line(exc)} "
                "(a Cobra version this backend does not know?)"
            ) from None
        except Exception as exc:  # this sample fails and is retried on resume; the rest go on
            return exc
        return str(text).strip()


def generation_kwargs(params: GenerationParams) -> dict[str, Any]:
    """Keyword arguments for ``vlm.generate``: greedy at temperature 0, else nucleus sampling.

    Cobra's Mamba ``generate`` keeps its default ``top_k=1`` (greedy) even with
    ``do_sample=True``; ``top_k=0`` lifts the limit so that temperature and top_p decide.
    """
    kwargs: dict[str, Any] = {"use_cache": True, "max_new_tokens": params.max_new_tokens}
    if params.temperature == 0:
        kwargs["do_sample"] = False
    else:
        kwargs.update(do_sample=True, top_k=0, temperature=params.temperature, top_p=params.top_p)
    return kwargs


# -- the package and PyTorch ---------------------------------------------------------------


def _missing_package() -> str:
    return f"the cobra backend needs the Cobra VLM package (cobra-vlm): {INSTALL}"


def _import_cobra() -> Any:
    try:
        cobra = importlib.import_module("cobra")
    except ModuleNotFoundError as exc:
        if exc.name == "cobra":
            raise BackendError(_missing_package()) from None
        raise BackendError(
            f"the Cobra VLM package is installed but cannot be imported: {_first_line(exc)} "
            f"(it needs mamba-ssm and causal-conv1d built for CUDA: {INSTALL})"
        ) from None
    except Exception as exc:  # a CUDA extension that does not fit this machine, say
        raise BackendError(
            f"the Cobra VLM package is installed but importing it failed: {_first_line(exc)}"
        ) from None
    if not callable(getattr(cobra, "load", None)):
        where = getattr(cobra, "__file__", None) or ", ".join(getattr(cobra, "__path__", []))
        raise BackendError(
            f"the module 'cobra' found at {where} is not the Cobra VLM package (it has no "
            f"load()); COBRApy uses the same import name. The cobra backend needs: {INSTALL}"
        )
    return cobra


def _optional_torch() -> ModuleType | None:
    try:
        import torch
    except ImportError:
        return None
    return torch


def _placement(device_option: str, dtype_option: str, torch: Any) -> tuple[Any, Any]:
    """The device and dtype to move the model to; dtype None leaves the weights as loaded."""
    if torch is None:
        if device_option not in ("auto", "cpu") or dtype_option not in ("auto", "float32"):
            raise BackendError(
                f"--device {device_option} --dtype {dtype_option} need PyTorch, "
                "which is not installed"
            )
        return "cpu", None
    if device_option == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif device_option.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(f"--device {device_option}: CUDA is not available to this PyTorch")
    else:
        device = torch.device(device_option)
    if dtype_option == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, getattr(torch, dtype_option)


def _known_ids(cobra: Any) -> list[str]:
    available = getattr(cobra, "available_models", None)
    try:
        return [str(name) for name in available()] if callable(available) else []
    except Exception:  # only a hint for an error message: never hide the real error
        return []


# -- where the model is --------------------------------------------------------------------


def _run_directory(model: str) -> Path | None:
    """The run directory if ``model`` names a local folder; raise if it is not a usable one."""
    path = Path(model).expanduser()
    if path.is_dir():
        missing = [str(p) for p in (RUN_CONFIG, RUN_CHECKPOINT) if not (path / p).is_file()]
        if missing:
            raise BackendError(
                f"cannot load Cobra model {model!r}: the directory {path.resolve()} has no "
                f"{' and no '.join(missing)} (a Cobra run directory has {RUN_CONFIG} and "
                f"{RUN_CHECKPOINT})"
            )
        return path.resolve()
    if path.exists():
        raise BackendError(
            f"cannot load Cobra model {model!r}: {path.resolve()} is a file, not a run directory"
        )
    # Cobra's ids ("cobra+3b") have no slashes: anything that looks like a path is meant as one
    if model.startswith((".", "~")) or "/" in model or "\\" in model or path.is_absolute():
        raise BackendError(
            f"cannot load Cobra model {model!r}: there is no directory {path.resolve()} "
            f"(and it is not a Cobra model id such as {EXAMPLE_MODEL})"
        )
    return None


def _run_digest(directory: Path) -> str:
    """sha256 over config.json and the checkpoint's size and both ends."""
    digest = hashlib.sha256()
    config = directory / RUN_CONFIG
    digest.update(f"{RUN_CONFIG}\0".encode() + config.read_bytes())
    checkpoint = directory / RUN_CHECKPOINT
    size = checkpoint.stat().st_size
    digest.update(f"\0{RUN_CHECKPOINT.as_posix()}\0{size}\0".encode())
    with checkpoint.open("rb") as handle:
        digest.update(handle.read(SAMPLE_BYTES))
        handle.seek(max(size - SAMPLE_BYTES, 0))
        digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def _first_line(exc: BaseException, secret: str | None = None) -> str:
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    # a download error may quote the request, token included
    return line.replace(secret, "***") if secret else line
