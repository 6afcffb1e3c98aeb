"""Transformer behaviours that survived mutation testing (scripts/mutation.py): each test kills a mutant that the
golden forward passes cannot see."""

import math

import numpy as np
import pytest
import torch
from _helpers import tiny_transformer

from diffusers_ruyi.models.transformer_ruyi import RuyiImageResampler


def _mae_sincos_table(embed_dim: int, grid_size: int) -> np.ndarray:
    """The MAE 2D sin/cos table written out position by position in float64: for the token at (row, col), the
    column's sin and cos over ``embed_dim / 4`` frequencies ``10000 ** (-k / (embed_dim / 4))``, then the row's."""
    quarter = embed_dim // 4
    omega = np.array([10000.0 ** (-k / quarter) for k in range(quarter)])
    rows = []
    for row in range(grid_size):
        for col in range(grid_size):
            rows.append(
                np.concatenate([np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)])
            )
    return np.stack(rows)


def test_resampler_position_table_is_the_mae_one():
    # The checkpoint stores this table (`clip_projection.pos_embed`), but a model built from a config (training from
    # scratch, the tiny test checkpoints) starts from it. 8 channels: the frequencies are 1 and 1/100, and a 128-wide
    # grid makes a wrong base (9999 instead of 10000) move the second frequency's angles by ~6e-5.
    table = RuyiImageResampler(num_queries=128 * 128, embed_dim=8, num_heads=1, kv_dim=8).pos_embed
    table = table.detach().double().numpy()
    assert table.shape == (128 * 128, 8)
    np.testing.assert_allclose(table, _mae_sincos_table(8, 128), atol=3e-5, rtol=0)
    # The slow frequency at the last column, where float32 rounding is far below a wrong base's error.
    last_col = 127
    assert math.isclose(table[last_col, 1], math.sin(last_col / 100.0), abs_tol=2e-6)
    assert math.isclose(table[last_col * 128, 5], math.sin(last_col / 100.0), abs_tol=2e-6)


def test_defaults_are_the_published_transformer():
    # Kills `projection_dim: int = 1024` -> 1023 in RuyiTransformer3DModel.__init__ (models/transformer_ruyi.py): as
    # its docstring says, the defaults are the published Ruyi-Mini-7B transformer's config, key for key (read from the
    # signature: building the 7B model here would take 29 GB).
    import inspect
    import json
    import pathlib

    from diffusers_ruyi import RuyiTransformer3DModel
    from diffusers_ruyi.loaders.original_checkpoint import convert_transformer_config

    path = pathlib.Path(__file__).parents[1] / "fixtures" / "real_checkpoint" / "transformer_config.json"
    published = convert_transformer_config(json.loads(path.read_text()))
    parameters = inspect.signature(RuyiTransformer3DModel.__init__).parameters
    assert set(published) <= set(parameters)
    defaults = {name: parameters[name].default for name in published}
    assert defaults == published


@pytest.mark.parametrize("n_query", [15, 17, 2])
def test_non_square_n_query_is_refused(n_query):
    # Kills `math.isqrt(n_query) ** 2 != n_query` -> `>` in RuyiTransformer3DModel.__init__ (models/transformer_ruyi.py):
    # an integer square root squared is never above n_query, so that check would never refuse.
    with pytest.raises(ValueError, match=f"`n_query` must be a perfect square .* got {n_query}"):
        tiny_transformer(n_query=n_query)


def test_resampler_attention_is_torch_multihead_attention_when_queries_and_head_width_differ():
    # Kills `query.shape[-1]` -> `query.shape[1]` in RuyiResamplerAttention.forward (models/transformer_ruyi.py): the
    # scale is 1/sqrt(head width), not of the query count (equal in the tiny config: 16 queries of width 16).
    from diffusers_ruyi.models.transformer_ruyi import RuyiResamplerAttention

    torch.manual_seed(0)
    ours = RuyiResamplerAttention(embed_dim=24, num_heads=2)  # heads of width 12
    reference = torch.nn.MultiheadAttention(24, 2)
    reference.load_state_dict(ours.state_dict())
    query, key = torch.randn(5, 3, 24), torch.randn(7, 3, 24)
    with torch.no_grad():
        expected = reference(query, key, key, need_weights=False)[0]
        assert torch.allclose(ours(query, key, key), expected, atol=1e-6)
