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


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
    return GOLDEN


@pytest.fixture(scope="session")
def tiny_checkpoint() -> pathlib.Path:
    """The tiny random checkpoint in the ORIGINAL Ruyi hub layout."""
    return TINY_CHECKPOINT


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
