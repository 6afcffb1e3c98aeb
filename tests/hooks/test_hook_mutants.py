"""Hook behaviours that survived mutation testing (scripts/mutation.py); each test names the mutant it kills."""

import pytest
import torch

from diffusers_ruyi import RuyiTransformer3DModel
from diffusers_ruyi.hooks import RuyiTeaCacheConfig, get_ruyi_teacache_skipped_steps
from diffusers_ruyi.hooks.teacache import _get_head_hook
from diffusers_ruyi.loaders.original_checkpoint import convert_transformer_config
from diffusers_ruyi.tiny import TINY_TRANSFORMER_CONFIG


def _tiny_model() -> RuyiTransformer3DModel:
    torch.manual_seed(0)
    return RuyiTransformer3DModel.from_config(convert_transformer_config(TINY_TRANSFORMER_CONFIG)).eval()


def _inputs(batch=1, frames=2, height=4, width=4):
    cfg = TINY_TRANSFORMER_CONFIG
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return {
        "hidden_states": randn(batch, 16, frames, height, width),
        "encoder_hidden_states": randn(batch, cfg["text_len"], cfg["cross_attention_dim"]),
        "text_embedding_mask": torch.ones(batch, cfg["text_len"], dtype=torch.int64),
        "encoder_hidden_states_t5": randn(batch, cfg["text_len_t5"], cfg["cross_attention_dim_t5"]),
        "text_embedding_mask_t5": torch.ones(batch, cfg["text_len_t5"], dtype=torch.int64),
        "image_meta_size": torch.tensor([[1024.0, 1024.0, height * 8.0, width * 8.0, 0.0, 0.0]] * batch),
        "style": torch.zeros(batch, dtype=torch.int64),
        "inpaint_latents": randn(batch, cfg["in_channels"] - 16, frames, height, width),
        "clip_encoder_hidden_states": randn(batch, 16, cfg["projection_dim"]),
        "clip_attention_mask": torch.ones(batch, cfg["n_query"]),
    }


def test_teacache_frees_its_tensors_after_the_last_step():
    # Kills `step >= num_steps - 1` -> `step >= num_steps - 0` (hooks/teacache.py): the cached block input, residual
    # and modulated input are released after the last step, as the original does, not kept until the next run.
    model, inputs = _tiny_model(), _inputs()
    model.enable_cache(RuyiTeaCacheConfig(threshold=0.1, skip_start_steps=1, skip_end_steps=1))
    hook = _get_head_hook(model)
    hidden_states = inputs.pop("hidden_states")
    num_steps = 4

    def cached_tensors():
        with model.cache_context("cond_uncond"):
            state = hook.state_manager.get_state()
            return [state.previous_modulated_input, state.block_input, state.residual]

    with torch.no_grad():
        for step in range(num_steps):
            with model.cache_context("cond_uncond", step_index=step, num_inference_steps=num_steps):
                model(hidden_states, torch.full((1,), 500.0 - step), **inputs)
            if step == num_steps - 2:
                modulated, _, residual = cached_tensors()  # held while the run goes on
                assert modulated is not None and residual is not None
    assert all(t is None for t in cached_tensors())


@pytest.mark.parametrize("module", [torch.nn.Linear(2, 2), torch.nn.Module()], ids=["no_blocks", "empty_blocks"])
def test_teacache_skipped_steps_on_a_model_without_it(module):
    # Kills `blocks is not None and len(blocks)` -> `or` (hooks/teacache.py): a model without blocks, or with none,
    # gets the clear "not enabled" error, not a TypeError or IndexError.
    if not isinstance(module, torch.nn.Linear):
        module.blocks = torch.nn.ModuleList()
    with pytest.raises(ValueError, match="TeaCache is not enabled"):
        get_ruyi_teacache_skipped_steps(module)
    with pytest.raises(ValueError, match="TeaCache is not enabled"):
        get_ruyi_teacache_skipped_steps(_tiny_model())


def _two_linears() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))


def test_fp8_compute_dtype_is_the_given_one_or_the_models():
    # Kills `if compute_dtype is None` -> `is not None` (hooks/fp8.py): an explicit compute dtype was replaced by the
    # model's, and the default stayed None. The layers must run in the compute dtype asked for.
    from diffusers_ruyi.hooks import apply_fp8_mode

    x = torch.randn(2, 8)
    model = _two_linears()
    reference = model(x)
    assert apply_fp8_mode(model, "extreme") == ["0", "1"]  # float32 model: computes in float32
    out = model(x)
    assert out.dtype == torch.float32 and torch.allclose(out, reference, atol=0.1)

    model = _two_linears()
    apply_fp8_mode(model, "extreme", compute_dtype=torch.bfloat16)
    out = model(x.to(torch.bfloat16))  # a float32 compute dtype would fail on a bfloat16 input
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), reference, atol=0.1)


def test_fp8_passes_its_casting_options_to_every_layer(monkeypatch):
    # Kills `non_blocking: bool = False` -> `True` (hooks/fp8.py), which a CPU run cannot see: what reaches
    # diffusers' layerwise-casting hook is checked instead.
    from diffusers_ruyi.hooks import apply_fp8_mode, fp8

    calls = []
    monkeypatch.setattr(fp8, "apply_layerwise_casting_hook", lambda module, *args: calls.append(args))
    apply_fp8_mode(_two_linears(), "extreme", torch.float8_e5m2, compute_dtype=torch.bfloat16)
    assert calls == [(torch.float8_e5m2, torch.bfloat16, False)] * 2
    calls.clear()
    apply_fp8_mode(_two_linears(), "extreme", non_blocking=True)
    assert calls == [(torch.float8_e4m3fn, torch.float32, True)] * 2
