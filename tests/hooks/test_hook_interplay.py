"""How the hooks combine with one another, with LoRAs and with saving: orders that used to fail late or silently."""

import PIL.Image
import pytest
import torch
from _helpers import FIXTURES, tiny_transformer, transformer_inputs
from diffusers import FasterCacheConfig, FirstBlockCacheConfig

from diffusers_ruyi.hooks import (
    RuyiEnhanceAVideoConfig,
    RuyiTeaCacheConfig,
    apply_fp8_mode,
    apply_ruyi_enhance_a_video,
    apply_ruyi_teacache,
    remove_ruyi_enhance_a_video,
    remove_ruyi_teacache,
)
from diffusers_ruyi.tiny import build_tiny_random_pipeline


LORA = FIXTURES / "lora"


@pytest.fixture
def tiny_pipe():
    pipe = build_tiny_random_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe, steps=4):
    return pipe(
        PIL.Image.new("RGB", (32, 32), (120, 60, 200)), height=32, width=32, num_frames=8, num_inference_steps=steps,
        output_type="latent", generator=torch.Generator().manual_seed(0),
    ).frames  # fmt: skip


def _hooks(model):
    return sorted(
        {h for _, m in model.named_modules() if getattr(m, "_diffusers_hook", None) for h in m._diffusers_hook.hooks}
    )


def test_removing_enhance_a_video_keeps_a_faster_cache_enabled_after_it(tiny_pipe):
    # diffusers hands a removed hook's forward to the next hook, which for FasterCache's (a `new_forward`) replaced
    # it: FasterCache then silently stopped running.
    transformer = tiny_pipe.transformer
    transformer.enable_cache(FasterCacheConfig())
    alone = _latents(tiny_pipe, steps=8)
    transformer.disable_cache()
    plain = _latents(tiny_pipe, steps=8)
    apply_ruyi_enhance_a_video(transformer, RuyiEnhanceAVideoConfig(weight=2.0))
    transformer.enable_cache(FasterCacheConfig())
    remove_ruyi_enhance_a_video(transformer)
    after = _latents(tiny_pipe, steps=8)
    assert (alone - plain).abs().max() > 1e-4  # FasterCache does change the result here
    assert torch.equal(after, alone)
    transformer.disable_cache()
    assert _hooks(transformer) == [] and torch.equal(_latents(tiny_pipe, steps=8), plain)


def test_teacache_applied_directly_is_the_models_one_cache():
    model = tiny_transformer()
    apply_ruyi_teacache(model, RuyiTeaCacheConfig())
    with pytest.raises(ValueError, match="Caching has already been enabled"):
        model.enable_cache(FirstBlockCacheConfig(threshold=0.1))  # no second cache stacked on the same blocks
    with pytest.raises(ValueError, match=r"A cache is already enabled \(RuyiTeaCacheConfig\)"):
        apply_ruyi_teacache(model, RuyiTeaCacheConfig())
    model.disable_cache()  # removes it, as for `enable_cache`
    assert _hooks(model) == [] and not model.is_cache_enabled
    model.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    with pytest.raises(ValueError, match=r"A cache is already enabled \(FirstBlockCacheConfig\)"):
        apply_ruyi_teacache(model, RuyiTeaCacheConfig())
    model.disable_cache()
    # Enabled through the model and removed directly: it can be enabled again.
    model.enable_cache(RuyiTeaCacheConfig())
    remove_ruyi_teacache(model)
    assert not model.is_cache_enabled
    model.enable_cache(RuyiTeaCacheConfig())
    assert model.is_cache_enabled and _hooks(model)
    model.disable_cache()


def test_teacache_skipped_steps_follow_the_context_that_ran_last():
    from diffusers_ruyi.hooks import get_ruyi_teacache_skipped_steps
    from diffusers_ruyi.hooks.teacache import ruyi_teacache_call_count

    model, inputs = tiny_transformer(), transformer_inputs()
    model.enable_cache(RuyiTeaCacheConfig(threshold=100.0))
    with torch.no_grad():
        for context, steps in (("first", 6), ("second", 8), ("first", 6)):  # "first" again, last
            for i in range(steps):
                with model.cache_context(context, step_index=i, num_inference_steps=steps):
                    model(**inputs, timestep=torch.full((2,), 999.0 - i))
    assert get_ruyi_teacache_skipped_steps(model) == get_ruyi_teacache_skipped_steps(model, "first") == [3, 4]
    assert ruyi_teacache_call_count(model) == 6 and ruyi_teacache_call_count(model, "second") == 8
    model.disable_cache()


@pytest.mark.parametrize("name", ["ruyi_lora_original.safetensors", "ruyi_lora_peft.safetensors"])
def test_a_lora_on_fp8_layers_is_refused_before_anything_loads(tiny_pipe, name):
    # PEFT makes an adapter in its layer's weight dtype: loaded after the fp8 mode, the adapters were rounded to fp8
    # and the next call (or `fuse_lora`) failed deep inside PEFT.
    apply_fp8_mode(tiny_pipe.transformer, "extreme", min_numel=0)
    with pytest.raises(
        ValueError, match=r"adapts \d+ layers whose weights are stored in fp8 .*before `apply_fp8_mode`"
    ):
        tiny_pipe.load_lora_weights(LORA / name)
    assert not [n for n, _ in tiny_pipe.transformer.named_modules() if n.endswith("lora_A")]  # nothing loaded
    assert torch.isfinite(_latents(tiny_pipe, steps=1)).all()


def test_a_lora_loaded_before_the_fp8_mode_still_fuses(tiny_pipe):
    tiny_pipe.load_lora_weights(LORA / "ruyi_lora_original.safetensors")
    apply_fp8_mode(tiny_pipe.transformer, "extreme", min_numel=0)  # leaves the adapted layers in full precision
    tiny_pipe.fuse_lora()
    tiny_pipe.unload_lora_weights()
    assert torch.isfinite(_latents(tiny_pipe, steps=1)).all()


def test_fusing_qkv_projections_stored_in_fp8_is_refused(tiny_pipe):
    transformer = tiny_pipe.transformer
    apply_fp8_mode(transformer, "extreme", min_numel=0)
    before = _latents(tiny_pipe, steps=1)
    with pytest.raises(ValueError, match=r"\d+ of them are stored in fp8 .*Fuse them before applying the fp8 mode"):
        transformer.fuse_qkv_projections()
    assert torch.equal(_latents(tiny_pipe, steps=1), before)


def test_fusing_qkv_projections_then_fp8_works(tiny_pipe):
    tiny_pipe.transformer.fuse_qkv_projections()
    apply_fp8_mode(tiny_pipe.transformer, "extreme", min_numel=0)
    assert torch.isfinite(_latents(tiny_pipe, steps=1)).all()


def test_saving_weights_stored_in_fp8_is_refused_before_anything_is_written(tiny_pipe, tmp_path):
    # They would load back as full-precision weights rounded to fp8, with no fp8 mode: the precision lost for good.
    tiny_pipe.transformer.save_pretrained(tmp_path / "before")  # fine before the fp8 mode
    apply_fp8_mode(tiny_pipe.transformer, "lite", min_numel=0)
    with pytest.raises(ValueError, match=r"RuyiTransformer3DModel stores \d+ weights in fp8"):
        tiny_pipe.transformer.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=r"The transformer stores \d+ weights in fp8"):
        tiny_pipe.save_pretrained(tmp_path / "pipe")
    assert not (tmp_path / "model").exists() and not (tmp_path / "pipe").exists()


@pytest.mark.parametrize("storage", ["fp8_mode", "layerwise_casting"])
def test_a_model_cast_after_its_storage_was_set_is_refused_at_the_call(storage):
    # The cast reaches every weight, but the hooks keep up-casting their layers to the old compute dtype: torch then
    # failed in a matrix product ("mat1 and mat2 must have the same dtype"), naming neither.
    model, inputs = tiny_transformer().to(torch.bfloat16), transformer_inputs()
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    if storage == "fp8_mode":
        apply_fp8_mode(model, "strong", min_numel=0)
    else:
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    timestep = torch.full((inputs["hidden_states"].shape[0],), 500.0)
    with torch.no_grad():
        expected = model(timestep=timestep, **inputs).sample
        model.to(torch.float16)
        half = {k: v.half() if v.is_floating_point() else v for k, v in inputs.items()}
        with pytest.raises(TypeError, match=r"compute in torch.bfloat16, but the rest of it is in torch.float16"):
            model(timestep=timestep, **half)
        model.to(torch.bfloat16)  # cast back: the stored weights were rounded to float16 and back, the fp8 ones kept
        assert torch.isfinite(model(timestep=timestep, **inputs).sample).all() and expected.dtype == torch.bfloat16


@pytest.mark.parametrize("storage", ["fp8_mode", "layerwise_casting"])
def test_storage_set_after_a_call_with_another_compute_dtype_is_refused(storage):
    # The dtype check runs once per cast or storage change: setting the storage must make the next call check again.
    model, inputs = tiny_transformer().to(torch.bfloat16), transformer_inputs()
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    timestep = torch.full((inputs["hidden_states"].shape[0],), 500.0)
    with torch.no_grad():
        model(timestep=timestep, **inputs)
        if storage == "fp8_mode":
            apply_fp8_mode(model, "strong", min_numel=0, compute_dtype=torch.float16)
        else:
            model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float16)
        with pytest.raises(TypeError, match=r"compute in torch.float16, but the rest of it is in torch.bfloat16"):
            model(timestep=timestep, **inputs)
