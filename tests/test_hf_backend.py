"""The transformers backend against real tiny models, loaded as a user's ``--model DIR`` is.

The models have random weights (tests/tiny_models.py) and are built once per
module; nothing is mocked and nothing comes from the hub.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from cobra_eval.backends import BackendOptions, GenerationRequest, create_backend
from cobra_eval.backends.hf import HFBackend
from cobra_eval.cli import main
from cobra_eval.config import GenerationParams
from cobra_eval.errors import BackendError
from cobra_eval.generation import generate_isolated
from cobra_eval.images import ImageError
from tests.conftest import REPO, World
from tests.tiny_models import build_tiny_idefics3, build_tiny_llava, build_tokenizer

#: Prompts of different lengths, so that a batch really needs padding.
PROMPTS = [
    "describe",
    "write a short caption of this photo please",
    "what is this",
    "list all visible objects first then write one short sentence with detail",
]
GREEDY = GenerationParams(max_new_tokens=6)
#: Exact comparisons run in float32 on the CPU: in bfloat16 on a GPU, padded and unpadded
#: rows take different kernels and may round differently, which can flip a near-tie.
EXACT = {"device": "cpu", "dtype": "float32"}


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava")


@pytest.fixture(scope="module")
def idefics3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_idefics3(tmp_path_factory.mktemp("models") / "tiny-idefics3")


@pytest.fixture(scope="module")
def llava(llava_dir: Path) -> HFBackend:
    """One loaded backend shared by the tests that only generate."""
    backend = create_backend("hf", BackendOptions(model=str(llava_dir), **EXACT))
    assert isinstance(backend, HFBackend)
    return backend


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four images of different sizes and colours."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    paths = []
    for k, (size, color) in enumerate(
        [((8, 8), (200, 30, 30)), ((40, 24), (20, 180, 40)), ((16, 48), (10, 10, 220)),
         ((64, 64), (250, 250, 250))]
    ):  # fmt: skip
        path = root / f"img{k}.png"
        Image.new("RGB", size, color).save(path)
        paths.append(path)
    return paths


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def requests_for(images: list[Path], prompts: list[str] = PROMPTS) -> list[GenerationRequest]:
    return [GenerationRequest(image_path=i, prompt=p) for i, p in zip(images, prompts, strict=True)]


def one_at_a_time(
    backend: HFBackend, requests: list[GenerationRequest], params: GenerationParams
) -> list[str]:
    return [backend.generate([r], params)[0] for r in requests]


# -- loading and identity ------------------------------------------------------------------


def test_registry_loads_a_local_model_directory(llava_dir: Path, images: list[Path]) -> None:
    backend = create_backend("hf", BackendOptions(model=str(llava_dir)))
    assert isinstance(backend, HFBackend)
    [caption] = backend.generate(requests_for(images[:1], PROMPTS[:1]), GREEDY)
    assert len(caption.split()) == GREEDY.max_new_tokens


def test_identity_is_stable_and_loads_nothing(llava_dir: Path) -> None:
    # a fresh interpreter: this test process has imported torch for building the models
    script = textwrap.dedent(
        f"""
        import json, sys
        from cobra_eval.backends import BackendOptions, create_backend
        backend = create_backend("hf", BackendOptions(model={str(llava_dir)!r}))
        first, second = backend.identity(), backend.identity()
        assert first == second, (first, second)
        print(json.dumps({{"identity": first,
                           "imported": sorted({{"torch", "transformers"}} & set(sys.modules))}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["imported"] == []
    other = HFBackend(BackendOptions(model=str(llava_dir)))
    assert report["identity"] == other.identity()
    assert report["identity"]["name"] == "tiny-llava"
    assert report["identity"]["revision"].startswith("sha256:")


def test_identity_follows_the_weights_not_the_path(llava_dir: Path, tmp_path: Path) -> None:
    here, there = tmp_path / "a" / "tiny-llava", tmp_path / "b" / "c" / "tiny-llava"
    shutil.copytree(llava_dir, here)
    shutil.copytree(llava_dir, there)
    original = HFBackend(BackendOptions(model=str(llava_dir))).identity()
    assert HFBackend(BackendOptions(model=str(here))).identity() == original
    assert HFBackend(BackendOptions(model=str(there))).identity() == original

    weights = there / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # one byte of the last tensor
    weights.write_bytes(bytes(data))
    changed = HFBackend(BackendOptions(model=str(there))).identity()
    assert changed["name"] == original["name"]
    assert changed["revision"] != original["revision"]


def test_no_model_is_one_clear_error() -> None:
    with pytest.raises(BackendError, match="no model given: pass --model"):
        create_backend("hf", BackendOptions(model=None))


def test_a_missing_model_path_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "nope"
    with pytest.raises(BackendError) as caught:
        create_backend("hf", BackendOptions(model=str(missing)))
    message = str(caught.value)
    assert message.startswith(f"cannot load model {str(missing)!r}")
    assert "there is no directory" in message


def test_a_directory_without_config_is_one_clear_error(llava_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "just-weights"
    folder.mkdir()
    shutil.copy(llava_dir / "model.safetensors", folder)
    with pytest.raises(BackendError, match=r"has no config\.json"):
        create_backend("hf", BackendOptions(model=str(folder)))


def test_a_directory_without_weights_is_one_clear_error(llava_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(llava_dir / "config.json", folder)
    backend = create_backend("hf", BackendOptions(model=str(folder)))
    with pytest.raises(BackendError, match="has no weights"):
        backend.identity()


def test_bad_device_or_dtype_is_refused_without_loading(llava_dir: Path) -> None:
    with pytest.raises(BackendError, match="unknown device 'tpu'"):
        HFBackend(BackendOptions(model=str(llava_dir), device="tpu"))
    with pytest.raises(BackendError, match="unknown dtype 'int8'"):
        HFBackend(BackendOptions(model=str(llava_dir), dtype="int8"))


def test_an_uncached_hub_id_offline_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, images: list[Path]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # "nobody/..." must not happen to be a folder here
    backend = create_backend("hf", BackendOptions(model="nobody/no-such-vlm"))
    expected = "not a local directory, and it is not in the local Hugging Face cache"
    with pytest.raises(BackendError, match=expected):
        backend.identity()
    with pytest.raises(BackendError, match=expected):
        backend.generate(requests_for(images[:1], PROMPTS[:1]), GREEDY)


def test_a_text_only_model_is_refused_once_with_the_reason(
    tmp_path_factory: pytest.TempPathFactory, images: list[Path]
) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    tokenizer = build_tokenizer([], chat_template="{{ messages }}")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    backend = create_backend("hf", BackendOptions(model=str(folder)))
    assert backend.identity()["name"] == "tiny-llama"  # a folder with weights: identity works
    # an unusable model stops the run: it is not turned into failed samples
    with pytest.raises(BackendError) as first:
        generate_isolated(backend, requests_for(images[:3], PROMPTS[:3]), GREEDY)
    with pytest.raises(BackendError) as again:  # one load attempt, the same error every time
        backend.generate(requests_for(images[:1], PROMPTS[:1]), GREEDY)
    assert again.value is first.value
    message = str(first.value)
    assert message.startswith("cannot load model")
    assert "model_type 'llama'" in message
    assert "AutoModelForImageTextToText" in message


def test_a_hub_id_loads_from_the_local_cache(llava_dir: Path, images: list[Path]) -> None:
    """The hub cache layout, offline: identity is the snapshot commit, generation works."""
    cache = llava_dir.parent / "hub-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny-org--tiny-llava"
    shutil.copytree(llava_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = textwrap.dedent(
        f"""
        import json
        from pathlib import Path
        from cobra_eval.backends import BackendOptions, GenerationRequest, create_backend
        from cobra_eval.config import GenerationParams
        options = BackendOptions(model="tiny-org/tiny-llava", device="cpu", dtype="float32")
        backend = create_backend("hf", options)
        request = GenerationRequest(image_path=Path({str(images[0])!r}), prompt={PROMPTS[0]!r})
        out = backend.generate([request], GenerationParams(max_new_tokens=6))
        print(json.dumps({{"identity": backend.identity(), "out": out}}))
        """
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["identity"] == {"name": "tiny-org/tiny-llava", "revision": commit}
    local = HFBackend(BackendOptions(model=str(llava_dir), **EXACT))
    assert report["out"] == local.generate(requests_for(images[:1], PROMPTS[:1]), GREEDY)


# -- generation ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llava", "idefics3"])
def test_a_batch_equals_one_at_a_time_greedy(
    arch: str, request: pytest.FixtureRequest, images: list[Path]
) -> None:
    folder = request.getfixturevalue(f"{arch}_dir")
    backend = create_backend("hf", BackendOptions(model=str(folder), **EXACT))
    assert isinstance(backend, HFBackend)
    batch = requests_for(images)
    batched = backend.generate(batch, GREEDY)
    assert len(batched) == len(batch)
    assert all(len(text.split()) == GREEDY.max_new_tokens for text in batched), batched
    assert batched == one_at_a_time(backend, batch, GREEDY)


def test_bfloat16_runs(llava_dir: Path, images: list[Path]) -> None:
    backend = HFBackend(BackendOptions(model=str(llava_dir), device="cpu", dtype="bfloat16"))
    outputs = backend.generate(requests_for(images), GREEDY)
    assert [len(t.split()) for t in outputs] == [GREEDY.max_new_tokens] * 4


@pytest.mark.skipif(not _cuda_available(), reason="no CUDA device")
def test_auto_device_uses_cuda_in_bfloat16(llava_dir: Path, images: list[Path]) -> None:
    import torch

    backend = HFBackend(BackendOptions(model=str(llava_dir)))
    outputs = backend.generate(requests_for(images), GREEDY)
    assert [len(t.split()) for t in outputs] == [GREEDY.max_new_tokens] * 4
    assert torch.cuda.memory_allocated() > 0  # the weights went to the GPU


def test_max_new_tokens_is_honoured(llava: HFBackend, images: list[Path]) -> None:
    batch = requests_for(images)
    short = llava.generate(batch, GenerationParams(max_new_tokens=3))
    longer = llava.generate(batch, GenerationParams(max_new_tokens=9))
    # the tiny models never emit special tokens: one generated token = one word
    assert [len(t.split()) for t in short] == [3] * 4
    assert [len(t.split()) for t in longer] == [9] * 4
    for a, b in zip(short, longer, strict=True):
        assert b.startswith(a + " ")  # greedy: the longer output continues the shorter


def test_sampling_is_seeded(llava: HFBackend, images: list[Path]) -> None:
    batch = requests_for(images)

    def sample(seed: int) -> list[str]:
        return llava.generate(batch, GenerationParams(max_new_tokens=6, temperature=1.5, seed=seed))

    assert sample(7) == sample(7)
    draws = {tuple(sample(seed)) for seed in range(4)}
    assert len(draws) > 1  # it does sample


def test_unreadable_images_fail_only_their_own_request(
    llava: HFBackend, images: list[Path], tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    missing = tmp_path / "missing.png"
    batch = requests_for([images[0], missing, corrupt, images[3]])
    with pytest.raises(ImageError):
        llava.generate(batch, GREEDY)

    outputs = generate_isolated(llava, batch, GREEDY)
    assert isinstance(outputs[1], ImageError) and "not found" in str(outputs[1])
    assert isinstance(outputs[2], ImageError) and str(corrupt) in str(outputs[2])
    good = [batch[0], batch[3]]
    assert [outputs[0], outputs[3]] == one_at_a_time(llava, good, GREEDY)


@pytest.mark.parametrize("arch", ["llava", "idefics3"])
def test_a_full_cli_run_stores_every_sample(
    world: World, arch: str, request: pytest.FixtureRequest
) -> None:
    model_dir: Path = request.getfixturevalue(f"{arch}_dir")
    # world.run_args names the stand-in backend; the later --backend wins in click
    args = world.run_args(
        "--backend", "hf", "--model", str(model_dir), "--num_samples", "6",
        "--batch_size", "3", "--max_new_tokens", "5", "--checkpoint_interval", "3",
    )  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = world.rows("SELECT status, error, generated_caption FROM sample_result")
    assert len(rows) == 6
    assert all(status == "ok" and error is None for status, error, _ in rows), rows
    assert all(caption for *_, caption in rows), rows
    raw = [r[0] for r in world.rows("SELECT raw_output FROM sample_pass")]
    assert len(raw) == 6 and all(len(text.split()) == 5 for text in raw), raw
    [(config,)] = world.rows("SELECT config FROM run")
    model = json.loads(config)["model"]
    assert model == {"backend": "hf", **HFBackend(BackendOptions(model=str(model_dir))).identity()}
