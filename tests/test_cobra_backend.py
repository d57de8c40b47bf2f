"""``--backend cobra`` end to end, against a stand-in for the Cobra VLM package.

The real package needs CUDA and downloaded weights; tests/stand_ins/cobra has the same
inference API, checks what it is handed (a PIL RGB image, a prompt in its builder's
format, a placed model, only keyword arguments Cobra's generate accepts) and answers
from the image's pixels and the prompt text. So a stored caption equal to
``describe(image, "In: {prompt}\\nOut: ")`` proves the adapter drove the API correctly.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from cobra_eval.backends import Backend, BackendOptions, GenerationRequest, create_backend
from cobra_eval.backends.cobra import CobraBackend
from cobra_eval.config import GenerationParams
from cobra_eval.images import ImageError, load_image
from tests.conftest import REPO, World, run_cli_process

STAND_INS = REPO / "tests" / "stand_ins"
PLUGIN = "cobra_eval.backends.cobra:CobraBackend"
INSTALL_LINE = "the cobra backend needs the Cobra VLM package"
GREEDY = {"use_cache": True, "max_new_tokens": 128, "do_sample": False}
#: Where --device auto --dtype auto puts the model on this machine.
AUTO_PLACEMENT = (
    ("cuda", "torch.bfloat16") if torch.cuda.is_available() else ("cpu", "torch.float32")
)


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The stand-in importable as ``cobra`` for this test only (and not yet imported)."""
    sys.modules.pop("cobra", None)
    monkeypatch.syspath_prepend(str(STAND_INS))
    yield
    sys.modules.pop("cobra", None)


@pytest.fixture
def stand_in(on_path: None) -> ModuleType:
    """The stand-in module, freshly imported: its load and generate logs are empty."""
    import cobra

    return cobra


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A local Cobra run directory as training writes it: config.json and a checkpoint."""
    root = tmp_path / "runs" / "cobra+3b+stage-finetune+x7"
    (root / "checkpoints").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model": {"model_id": "cobra+3b"}}))
    (root / "checkpoints" / "latest-checkpoint.pt").write_bytes(b"weights" * 1000)
    return root


def cobra_args(world: World, *extra: str, backend: str = "cobra", model: str = "cobra+3b"):
    """The world's run command switched to the Cobra backend (later flags win)."""
    return world.run_args(*extra, "--backend", backend, "--model", model)


def stored(world: World) -> list[tuple]:
    """(image_id, status, prompt, raw_output, caption, reasoning, parse_status) per pass."""
    return world.rows(
        "SELECT r.image_id, r.status, p.prompt, p.raw_output, r.generated_caption, "
        "r.reasoning_trace, p.parse_status FROM sample_result r "
        "JOIN sample_pass p ON p.result_id = r.id ORDER BY r.image_id"
    )


def raw_outputs(world: World, run_id: str) -> list[str]:
    """A run's generations, in image order."""
    rows = world.rows(
        "SELECT p.raw_output FROM sample_result r JOIN sample_pass p ON p.result_id = r.id "
        "WHERE r.run_id = ? ORDER BY r.image_id",
        run_id,
    )
    return [text for (text,) in rows]


def answer(world: World, image_id: int, prompt: str, cobra: ModuleType) -> str:
    """What Cobra says about a dataset image, asked in its builder's format."""
    image = load_image(world.dataset.parent / f"img_{image_id:06d}.png")
    return cobra.describe(image, f"In: {prompt}\nOut: ")


@pytest.mark.parametrize("backend", ["cobra", PLUGIN], ids=["by-name", "by-plugin-spec"])
def test_a_baseline_run_stores_cobras_answers_for_exactly_those_images(
    world: World, cli, stand_in: ModuleType, backend: str
) -> None:
    result = cli(
        *cobra_args(world, "--num_samples", "5", backend=backend),
        env={"HF_TOKEN": "hf_test_token"},
    )
    assert result.exit_code == 0, result.output
    assert "Done: baseline 5/5 samples ->" in result.output
    rows = stored(world)
    assert [r[0] for r in rows] == [1000 + 7 * k for k in range(5)]
    for image_id, status, prompt, raw, caption, _, parse_status in rows:
        assert prompt == "Describe this image in one sentence."
        assert raw == answer(world, image_id, prompt, stand_in)
        assert (status, caption, parse_status) == ("ok", raw, "ok")
    assert len({r[3] for r in rows}) > 1  # different images, different answers
    assert stand_in.loaded == [("cobra+3b", "hf_test_token")]
    assert "hf_test_token" not in result.output
    assert [c["kwargs"] for c in stand_in.calls] == [GREEDY] * 5
    assert {(c["device"], c["dtype"]) for c in stand_in.calls} == {AUTO_PLACEMENT}
    ((config,),) = world.rows("SELECT config FROM run")
    assert json.loads(config)["model"] == {
        "backend": backend, "name": "cobra+3b", "revision": "hub:latest"
    }  # fmt: skip


def test_a_scratchpad_run_parses_cobras_caption_after_the_marker(
    world: World, cli, stand_in: ModuleType
) -> None:
    result = cli(*cobra_args(world, "--num_samples", "3", "--method", "scratchpad"))
    assert result.exit_code == 0, result.output
    rows = stored(world)
    assert len(rows) == 3
    for image_id, status, prompt, raw, caption, reasoning, parse_status in rows:
        assert prompt.startswith("First, write a short scratchpad")
        assert raw == answer(world, image_id, prompt, stand_in)
        assert raw.endswith("\nCaption: " + caption)
        assert reasoning.startswith("Objects: a ") and reasoning.endswith("filling the frame.")
        assert (status, parse_status) == ("ok", "ok")


def test_sampling_reaches_cobra_and_is_seeded_per_sample(
    world: World, cli, stand_in: ModuleType
) -> None:
    sampling = ("--num_samples", "4", "--temperature", "0.7", "--top_p", "0.9",
                "--seed", "3", "--max_new_tokens", "4", "--no_cache")  # fmt: skip
    for run_id, batch_size in (("batched", "4"), ("one_by_one", "1")):
        result = cli(*cobra_args(world, *sampling, "--batch_size", batch_size, "--run_id", run_id))
        assert result.exit_code == 0, result.output
    texts = {run_id: raw_outputs(world, run_id) for run_id in ("batched", "one_by_one")}
    # Cobra decodes greedily unless top_k is lifted; the shade word is drawn from torch's RNG
    assert stand_in.calls[0]["kwargs"] == {"use_cache": True, "max_new_tokens": 4,
        "do_sample": True, "top_k": 0, "temperature": 0.7, "top_p": 0.9}  # fmt: skip
    batched = texts["batched"]
    assert len(batched) == 4
    assert all(len(t.split()) == 4 and t.split()[1] in stand_in.SHADES for t in batched)
    assert texts["one_by_one"] == batched


def test_an_unreadable_image_fails_its_sample_and_the_others_succeed(
    world: World, cli, stand_in: ModuleType
) -> None:
    (world.dataset.parent / "img_001007.png").write_bytes(b"not a PNG any more")
    result = cli(*cobra_args(world, "--num_samples", "4"))
    assert result.exit_code == 0, result.output
    assert "Done: baseline 4/4 samples, 1 failed (retried on resume)" in result.output
    ((status, error),) = world.rows("SELECT status, error FROM sample_result WHERE image_id = 1007")
    assert status == "failed" and "img_001007.png: not an image file Pillow can read" in error
    assert world.rows("SELECT COUNT(*) FROM sample_result WHERE status = 'ok'") == [(3,)]
    assert len(stand_in.calls) == 3


def test_a_missing_image_is_answered_by_its_error_in_place(
    world: World, stand_in: ModuleType
) -> None:
    # the run command refuses missing files before it starts; one that goes missing
    # during a run reaches the backend, which must not fail its neighbours
    images = [world.dataset.parent / f"img_{1000 + 7 * k:06d}.png" for k in range(3)]
    images[1].unlink()
    backend = CobraBackend(BackendOptions(model="cobra+3b"))
    prompt = "Describe this image in one sentence."
    outputs = backend.generate(
        [GenerationRequest(image_path=p, prompt=prompt) for p in images], GenerationParams()
    )
    assert isinstance(outputs[1], ImageError) and "image file not found" in str(outputs[1])
    assert outputs[0] == answer(world, 1000, prompt, stand_in)
    assert outputs[2] == answer(world, 1014, prompt, stand_in)


def test_a_cobra_whose_generate_takes_other_arguments_stops_the_run(
    world: World, cli, stand_in: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def older_generate(image, prompt_text, *, cg=False, do_sample=False, max_new_tokens=None):
        return "never reached"

    monkeypatch.setattr(stand_in, "_mamba_generate", older_generate)
    result = cli(*cobra_args(world, "--num_samples", "3"))
    assert result.exit_code == 1
    assert "Cobra's generate() refused the arguments" in result.output
    assert "unexpected keyword argument 'use_cache'" in result.output
    assert "Traceback" not in result.output
    assert world.rows("SELECT COUNT(*) FROM sample_result WHERE status = 'ok'") == [(0,)]


def test_identity_is_stable_and_a_finished_run_resumes_without_loading(
    world: World, cli, stand_in: ModuleType, run_dir: Path
) -> None:
    def identity(model: str) -> dict:
        return create_backend("cobra", BackendOptions(model=model)).identity()

    assert identity(str(run_dir)) == identity(str(run_dir))
    assert identity(str(run_dir))["name"] == "cobra+3b+stage-finetune+x7"
    hub = {"name": "cobra+3b", "revision": "hub:latest"}
    assert identity("cobra+3b") == identity("cobra+3b") == hub
    before = identity(str(run_dir))
    (run_dir / "checkpoints" / "latest-checkpoint.pt").write_bytes(b"retrained" * 1000)
    assert identity(str(run_dir))["revision"] != before["revision"]
    assert stand_in.loaded == []  # identity never loads the model

    args = cobra_args(world, "--num_samples", "5", model=str(run_dir))
    assert cli(*args).exit_code == 0
    run_id = world.only_run_id()
    again = cli(*args, "--resume_from_checkpoint")
    assert again.exit_code == 0, again.output
    assert "Loaded checkpoint: 5 samples processed, 0 remaining" in again.output
    assert world.only_run_id() == run_id
    assert (len(stand_in.loaded), len(stand_in.calls)) == (1, 5)
    assert world.rows("SELECT COUNT(*) FROM sample_result WHERE status = 'ok'") == [(5,)]


@pytest.mark.parametrize(
    ("flags", "messages"),
    [
        ([], ["the cobra backend needs --model", "--model cobra+3b"]),
        (
            ["--model", "cobra+13b"],
            ["cannot load Cobra model 'cobra+13b' by its id", "ValueError: Couldn't find",
             "known ids: cobra+3b"],
        ),
        (["--model", "./runs/nowhere"], ["there is no directory", "not a Cobra model id"]),
        (["--model", "{empty_dir}"], ["has no config.json and no checkpoints/latest-"]),
        (
            ["--model", "cobra+3b", "--device", "mps"],
            ["unknown device 'mps'", "Cobra's Mamba kernels need CUDA"],
        ),
    ],
    ids=["no-model", "unknown-id", "no-such-dir", "not-a-run-dir", "mps"],
)  # fmt: skip
def test_bad_models_give_one_clear_error_and_store_no_samples(
    world: World, cli, stand_in: ModuleType, flags: list[str], messages: list[str]
) -> None:
    empty = world.root / "empty_run"
    empty.mkdir()
    flags = [f.replace("{empty_dir}", str(empty)) for f in flags]
    result = cli(*world.run_args("--num_samples", "3", "--backend", "cobra", *flags))
    assert result.exit_code == 1
    for message in messages:
        assert message in result.output
    assert "Traceback" not in result.output
    assert not world.db.exists() or world.rows("SELECT COUNT(*) FROM sample_result") == [(0,)]


@pytest.mark.parametrize(
    ("module_text", "messages"),
    [
        (
            '"""COBRApy: constraint-based modelling of metabolic networks."""\n',
            ["is not the Cobra VLM package", "COBRApy",
             "pip install git+https://github.com/h-zhao1997/cobra"],
        ),
        (
            "import mamba_ssm\n",
            ["the Cobra VLM package is installed but cannot be imported",
             "No module named 'mamba_ssm'", "mamba-ssm and causal-conv1d"],
        ),
    ],
    ids=["cobrapy-has-the-same-name", "mamba-kernels-missing"],
)  # fmt: skip
def test_a_cobra_module_that_cannot_serve_is_named_for_what_it_is(
    world: World, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    module_text: str, messages: list[str],
) -> None:  # fmt: skip
    package = tmp_path / "site" / "cobra"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(module_text)
    sys.modules.pop("cobra", None)
    monkeypatch.syspath_prepend(str(package.parent))
    try:
        result = cli(*cobra_args(world, "--num_samples", "2"))
    finally:
        sys.modules.pop("cobra", None)
    assert result.exit_code == 1
    for message in messages:
        assert message in result.output
    assert "Traceback" not in result.output
    assert world.rows("SELECT COUNT(*) FROM sample_result") == [(0,)]


def test_a_real_process_finds_cobra_on_pythonpath(world: World) -> None:
    path = os.pathsep.join([str(STAND_INS), str(REPO)])
    done = run_cli_process(*cobra_args(world, "--num_samples", "3"), PYTHONPATH=path)
    assert done.returncode == 0, done.stderr
    assert "Done: baseline 3/3 samples ->" in done.stdout
    assert world.rows("SELECT status, COUNT(*) FROM sample_result GROUP BY status") == [("ok", 3)]


def test_without_the_package_a_real_process_stops_with_how_to_install_it(world: World) -> None:
    done = run_cli_process(*cobra_args(world, "--num_samples", "3"), PYTHONPATH=str(REPO))
    assert done.returncode == 1
    assert INSTALL_LINE in done.stderr
    assert "pip install git+https://github.com/h-zhao1997/cobra" in done.stderr
    assert "Traceback" not in done.stderr
    assert not world.db.exists()  # refused before a run was recorded


def test_the_backend_is_cheap_until_it_generates(on_path: None) -> None:
    backend = CobraBackend(BackendOptions(model="cobra+3b"))
    assert isinstance(backend, Backend)
    assert backend.identity()["name"] == "cobra+3b"
    assert backend.generate([], GenerationParams()) == []
    assert "cobra" not in sys.modules  # neither construction nor identity imported it
