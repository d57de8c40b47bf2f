"""cobra_eval: captioning evaluation of VLMs; every sample is committed as it lands."""

__version__ = "0.1.0"
