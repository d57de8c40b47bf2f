"""A stand-in for the Cobra VLM package (``import cobra``): its inference API, no weights, no CUDA.

The real package (https://github.com/h-zhao1997/cobra) needs CUDA, the mamba-ssm
kernels and downloaded weights. With tests/stand_ins on sys.path (or PYTHONPATH),
``from cobra import load`` finds this module instead, and ``--backend cobra`` runs
end to end on any machine.

What it mirrors of the real package:
- ``load(model_id_or_path, hf_token=None, cache_dir=None)``: a run directory must hold
  config.json and checkpoints/latest-checkpoint.pt (AssertionError otherwise); an id
  that is not in the registry raises ValueError, with the real message.
- ``vlm.to(device, dtype=...)`` as ``nn.Module.to`` takes it (a torch dtype, not a name).
- ``vlm.get_prompt_builder()``: the Mamba prompt builder, rendering "In: {msg}\\nOut: ".
- ``vlm.generate(image, prompt_text, **kwargs)``: exactly the keyword arguments Cobra's
  Mamba ``generate``/``decode`` accept (others raise TypeError), with its quirk that
  ``do_sample=True`` still decodes greedily unless ``top_k`` is not 1.

What it checks that the real model would get wrong silently: the image must be a PIL
RGB image, the prompt must be in the builder's format, and the model must have been
placed with ``.to`` first. Its answer is a function of the image's pixels and the
prompt text (see ``describe``), so tests can compute what a run must store.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

MODEL_REGISTRY = {"cobra+3b": {"model_id": "cobra+3b", "names": ["Cobra-DINOSigLIP 3B"]}}
GLOBAL_REGISTRY = {name: v for k, v in MODEL_REGISTRY.items() for name in [k, *v["names"]]}
#: Named colours the answer picks the nearest of (by the image's mean pixel).
PALETTE = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 220),
    "yellow": (230, 220, 50), "purple": (140, 50, 170), "orange": (240, 140, 30),
    "white": (245, 245, 245), "black": (10, 10, 10), "grey": (128, 128, 128),
}  # fmt: skip
#: Words a sampled (not greedy) answer draws from the torch RNG, so seeding is visible.
SHADES = ["pale", "deep", "bright", "dusty", "dark", "soft", "vivid", "muted"]
PROMPT_FORMAT = re.compile(r"In: (?P<message>.+)\nOut: ", re.DOTALL)
#: Every load call, as (model_id_or_path, hf_token): a resume that generates nothing loads nothing.
loaded: list[tuple[str, str | None]] = []
#: Every generate call: the prompt text, the keyword arguments, and the model's placement.
calls: list[dict[str, Any]] = []


def available_models() -> list[str]:
    """The registry's model ids."""
    return list(MODEL_REGISTRY)


def available_model_names() -> list[str]:
    """Ids and their aliases."""
    return list(GLOBAL_REGISTRY)


def load(
    model_id_or_path: str | Path, hf_token: str | None = None, cache_dir: str | Path | None = None
) -> StandInVLM:
    """A 'loaded' model: checks what the real ``load`` checks, reads nothing heavy."""
    loaded.append((str(model_id_or_path), hf_token))
    if os.path.isdir(model_id_or_path):
        run_dir = Path(model_id_or_path)
        assert (run_dir / "config.json").exists(), f"Missing `config.json` for `{run_dir = }`"
        assert (run_dir / "checkpoints" / "latest-checkpoint.pt").exists(), "Missing checkpoint!"
        model_id = json.loads((run_dir / "config.json").read_text())["model"]["model_id"]
    elif model_id_or_path not in GLOBAL_REGISTRY:
        raise ValueError(
            f"Couldn't find `{model_id_or_path = }; check `cobra.available_model_names()`"
        )
    else:
        model_id = GLOBAL_REGISTRY[str(model_id_or_path)]["model_id"]
    return StandInVLM(model_id)


class MambaPromptBuilder:
    """Cobra's Mamba prompt builder: human turns are wrapped as "In: {msg}\\nOut: "."""

    def __init__(self, model_family: str, system_prompt: str | None = None):
        self.bos, self.eos = "", "<|endoftext|>"
        self.prompt, self.turn_count = "", 0

    def add_turn(self, role: str, message: str) -> str:
        assert (role == "human") if (self.turn_count % 2 == 0) else (role == "gpt")
        message = message.replace("<image>", "").strip()
        if self.turn_count % 2 == 0:
            wrapped = f"In: {message}\nOut: "
            if self.turn_count != 0:
                wrapped = "\n" + wrapped
        else:
            wrapped = f"{message if message != '' else ' '}{self.eos}"
        self.prompt += wrapped
        self.turn_count += 1
        return wrapped

    def get_prompt(self) -> str:
        return self.prompt.removeprefix(self.bos)


class StandInVLM:
    """The parts of ``CobraVLM`` that inference uses."""

    def __init__(self, model_id: str):
        self.model_id, self.model_family = model_id, "cobra"
        self.device: Any = None
        self.dtype: Any = None

    def to(self, *args: Any, **kwargs: Any) -> StandInVLM:
        """Like ``nn.Module.to(device, dtype=...)``: a dtype given by name is a TypeError."""
        import torch

        device = args[0] if args else kwargs.get("device")
        dtype = kwargs.get("dtype", args[1] if len(args) > 1 else None)
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"to() received an invalid combination of arguments: dtype={dtype!r}")
        self.device, self.dtype = torch.device(device), dtype
        return self

    def get_prompt_builder(self, system_prompt: str | None = None) -> MambaPromptBuilder:
        return MambaPromptBuilder(self.model_family, system_prompt=system_prompt)

    def generate(self, image: Any, prompt_text: str, **kwargs: Any) -> str:
        """The answer for one image, after checking the inputs as described above."""
        from PIL import Image

        if self.device is None:
            raise RuntimeError("stand-in: generate() before the model was placed with .to()")
        if not isinstance(image, Image.Image) or image.mode != "RGB":
            raise TypeError(f"stand-in: expected a PIL RGB image, got {image!r}")
        if not PROMPT_FORMAT.fullmatch(prompt_text):
            raise ValueError(f"stand-in: prompt not in the builder's format: {prompt_text!r}")
        calls.append({"prompt_text": prompt_text, "kwargs": dict(kwargs),
                      "device": str(self.device), "dtype": str(self.dtype)})  # fmt: skip
        return _mamba_generate(image, prompt_text, **kwargs)


def _mamba_generate(
    image: Any,
    prompt_text: str,
    *,
    do_sample: bool = False,
    max_length: int = 2000,
    max_new_tokens: int | None = None,
    top_k: int = 1,
    top_p: float = 0.0,
    temperature: float = 1.0,
    return_dict_in_generate: bool = False,
    output_scores: bool = False,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    teacher_outputs: Any = None,
    vocab_size: int | None = None,
    use_cache: bool = False,
    enable_timing: bool = False,
    streamer: Any = None,
) -> str:
    """Cobra's GenerationMixin.generate + decode signature, with its sampling rule."""
    if not do_sample:
        top_k = 1
    shade = None
    if top_k != 1:
        import torch

        shade = SHADES[int(torch.randint(len(SHADES), (1,)).item())]
    text = describe(image, prompt_text, shade=shade)
    tokens = re.findall(r"\S+\s*", text)
    return "".join(tokens[: max_new_tokens or max_length]).strip()


def describe(image: Any, prompt_text: str, *, shade: str | None = None) -> str:
    """The greedy answer: the image's nearest named colour and a hash of the prompt text."""
    from PIL import Image

    mean = image.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    colour = min(
        PALETTE,
        key=lambda name: sum((a - b) ** 2 for a, b in zip(PALETTE[name], mean, strict=True)),
    )
    what = f"a {shade + ' ' if shade else ''}{colour} square"
    tag = hashlib.sha256(prompt_text.encode()).hexdigest()[:8]
    match = PROMPT_FORMAT.fullmatch(prompt_text)
    if match and "Caption:" in match.group("message"):
        return f"Objects: {what} filling the frame.\nCaption: {what} (prompt {tag})"
    return f"{what} (prompt {tag})"
