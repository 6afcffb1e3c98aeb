import os
import pathlib


# Never reach the network from the test suite.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


FIXTURES = pathlib.Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
TINY_CHECKPOINT = GOLDEN / "Ruyi-tiny-random"
# The published checkpoint's format (slice VAE, model_index.json, DDPM config, CLIP .bin, bf16 embeddings).
GOLDEN_REALFMT = FIXTURES / "golden_realfmt"
TINY_REALFMT_CHECKPOINT = GOLDEN_REALFMT / "Ruyi-tiny-realfmt"
REAL_CHECKPOINT = FIXTURES / "real_checkpoint"


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


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
