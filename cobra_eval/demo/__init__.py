"""The bundled demo world: a synthetic captioning dataset and a tiny model trained on it.

Importing this package is cheap (no torch); the dataset is generated on first use.
"""

from pathlib import Path

from cobra_eval.demo.world import ensure_demo_dataset

#: The bundled demo model, loadable with AutoProcessor / AutoModelForImageTextToText.
DEMO_MODEL_DIR: Path = Path(__file__).resolve().parent / "model"

__all__ = ["DEMO_MODEL_DIR", "ensure_demo_dataset"]
