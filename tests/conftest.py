import os
import pathlib


# Never reach the network from the test suite.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# torch's oneDNN bfloat16 3D convolution on CPUs with AMX (Intel Sapphire Rapids and later) can return wrong values or
# NaN, at random, for some shapes (torch 2.13 and 2.14; docs/pipeline.md#known-issues). The suite's bfloat16 runs use
# the AVX-512 kernels instead, as the docs advise; a cap, so other CPUs are unaffected. oneDNN reads it at its first
# convolution, after this.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")

import pytest  # noqa: E402
import torch  # noqa: E402
from _helpers import (  # noqa: E402
    GOLDEN,
    GOLDEN_REALFMT,
    REAL_CHECKPOINT,
    TINY_CHECKPOINT,
    TINY_REALFMT_CHECKPOINT,
    load_pipe,
    open_rgb,
    restored_after_test,
)


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
    return GOLDEN


@pytest.fixture(scope="session")
def tiny_checkpoint() -> pathlib.Path:
    """The tiny random checkpoint in the ORIGINAL Ruyi hub layout."""
    return TINY_CHECKPOINT


@pytest.fixture(scope="session")
def golden_realfmt_dir() -> pathlib.Path:
    return GOLDEN_REALFMT


@pytest.fixture(scope="session")
def tiny_realfmt_checkpoint() -> pathlib.Path:
    """The tiny random checkpoint laid out like the PUBLISHED ``IamCreateAI/Ruyi-Mini-7B`` files."""
    return TINY_REALFMT_CHECKPOINT


@pytest.fixture(scope="session")
def real_checkpoint_dir() -> pathlib.Path:
    """The published configs and the original classes' key -> shape maps (no weights)."""
    return REAL_CHECKPOINT


@pytest.fixture(scope="module")
def pipe():
    """The tiny checkpoint's pipeline in float32, one per test module (a module may change it for its tests)."""
    return load_pipe(TINY_CHECKPOINT, dtype=torch.float32)


@pytest.fixture
def clean_pipe(pipe):
    """The module's pipeline, restored to its base weights (no adapters) after each test."""
    yield from restored_after_test(pipe)


class ModelRanError(AssertionError):
    """Raised by ``guarded_pipe``'s models: a model ran before the input was validated."""


@pytest.fixture
def guarded_pipe(pipe, monkeypatch):
    """The module's pipeline, with every model call raising: bad input must be refused before any heavy work."""

    def boom(*args, **kwargs):
        raise ModelRanError("a model ran before the input was validated")

    monkeypatch.setattr(pipe.transformer, "forward", boom)
    monkeypatch.setattr(pipe.image_encoder, "forward", boom)
    monkeypatch.setattr(pipe.vae, "encode", boom)
    return pipe


@pytest.fixture(scope="module")
def start_image():
    """The start image of the golden ``start_only`` case."""
    return open_rgb(GOLDEN / "start_only_start.png")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
