"""Pipeline calls are independent: no cache state survives a call that raised, and hooks added to the transformer
after `enable_model_cpu_offload` keep running on every call."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FasterCacheConfig, FirstBlockCacheConfig

from diffusers_ruyi.hooks import RuyiEnhanceAVideoConfig, apply_ruyi_enhance_a_video
from diffusers_ruyi.tiny import build_tiny_random_pipeline


IMAGE = PIL.Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8))
FASTER_CACHE = dict(
    spatial_attention_block_skip_range=2,
    spatial_attention_timestep_skip_range=(-1, 1001),
    unconditional_batch_skip_range=2,
    unconditional_batch_timestep_skip_range=(-1, 1001),
)
FEATURES = {
    "first_block_cache": lambda t: t.enable_cache(FirstBlockCacheConfig(threshold=0.5)),
    "faster_cache": lambda t: t.enable_cache(FasterCacheConfig(**FASTER_CACHE)),
    "enhance_a_video": lambda t: apply_ruyi_enhance_a_video(t, RuyiEnhanceAVideoConfig(weight=3.0)),
}


def _pipe():
    pipe = build_tiny_random_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, **kwargs):
    kwargs = {"num_frames": 16, "height": 64, "width": 64, "num_inference_steps": 6, "output_type": "latent", **kwargs}
    return pipe(IMAGE, generator=torch.Generator().manual_seed(0), **kwargs).frames


class _Stop(Exception):
    pass


def _raise_at_step_3(pipe, step, timestep, callback_kwargs):
    if step == 3:
        raise _Stop
    return {}


@pytest.mark.parametrize("feature", ["first_block_cache", "faster_cache"])
def test_a_call_that_raised_leaves_no_cache_state(feature):
    pipe = _pipe()
    FEATURES[feature](pipe.transformer)
    expected = _run(pipe)
    # Stopped mid-loop with a batch of two (Ctrl-C, out of memory...): the reset at the end of the call never ran.
    with pytest.raises(_Stop):
        _run(pipe, num_videos_per_prompt=2, callback_on_step_end=_raise_at_step_3)
    assert torch.equal(_run(pipe), expected)


@pytest.mark.parametrize("feature", ["faster_cache", "enhance_a_video"])
def test_hooks_added_after_model_cpu_offload_run_on_every_call(feature):
    # diffusers re-enables model offload at the end of every call; re-attaching accelerate's hook restored the
    # transformer's forward from before the feature was added, which dropped it from the second call on.
    pipe = _pipe()
    FEATURES[feature](pipe.transformer)
    expected = _run(pipe)
    pipe = _pipe()
    pipe.enable_model_cpu_offload(device="cpu")
    FEATURES[feature](pipe.transformer)
    offloaded = []
    for hook in pipe._all_hooks:
        hook.offload = lambda hook=hook, offload=hook.offload: offloaded.append(hook.model) or offload()
    assert torch.equal(_run(pipe), expected)
    # Every model was moved back to the offload device at the end of the call, through its own hook.
    assert {id(model) for model in offloaded} >= {id(pipe.image_encoder), id(pipe.transformer), id(pipe.vae)}
    assert torch.equal(_run(pipe), expected)


def test_a_component_replaced_after_model_cpu_offload_gets_its_hook():
    pipe = _pipe()
    pipe.enable_model_cpu_offload(device="cpu")
    _run(pipe, num_inference_steps=1)
    pipe.vae = _pipe().vae
    assert not hasattr(pipe.vae, "_hf_hook")
    _run(pipe, num_inference_steps=1)
    # The end of the call re-attached the hooks, as diffusers does: the new VAE is offloaded like the old one was.
    assert hasattr(pipe.vae, "_hf_hook") and any(hook.model is pipe.vae for hook in pipe._all_hooks)
