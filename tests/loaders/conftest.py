"""Fixtures shared by the LoRA test modules."""

import pytest
from _helpers import golden_transformer_inputs, small_golden_inputs


@pytest.fixture(scope="module")
def golden_inputs():
    """The golden transformer forward's inputs (both CFG samples) and its output."""
    return golden_transformer_inputs()


@pytest.fixture(scope="module")
def small_inputs(golden_inputs):
    """The conditional sample of those inputs, two latent frames: fast to run many times."""
    return small_golden_inputs(golden_inputs)
