"""Speed and memory features: TeaCache, Enhance-A-Video, diffusers caches, fp8, offloading, compile, context parallel.

Parity with the original implementation uses the goldens in `tests/fixtures/golden_extra/` (see its README).
"""

import inspect
import json
import os
import socket

import pytest
import torch
from _helpers import GOLDEN_EXTRA, extra_expected, run_extra_case, tiny_transformer, transformer_inputs
from diffusers import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
    TextKVCacheConfig,
)

from diffusers_ruyi import RuyiTransformer3DModel
from diffusers_ruyi.hooks import (
    RuyiEnhanceAVideoConfig,
    RuyiSkipOffloadConfig,
    RuyiTeaCacheConfig,
    apply_fp8_mode,
    apply_ruyi_enhance_a_video,
    apply_ruyi_skip_offload,
    enhance_a_video_score,
    get_ruyi_teacache_skipped_steps,
    remove_ruyi_enhance_a_video,
    remove_ruyi_skip_offload,
    select_fp8_modules,
)
from diffusers_ruyi.hooks.skip_offload import LongSkipStack
from diffusers_ruyi.models import transformer_ruyi


GOLDEN_TOL = 1e-4


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _denoise(model, inputs, timesteps, latent_drift=0.0, with_step_info=True):
    """Calls the model once per timestep like a pipeline; returns the outputs."""
    outputs = []
    hidden_states = inputs["hidden_states"]
    other = {k: v for k, v in inputs.items() if k != "hidden_states"}
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            kwargs = {"step_index": i, "num_inference_steps": len(timesteps)} if with_step_info else {}
            with model.cache_context("cond_uncond", **kwargs):
                timestep = torch.full((hidden_states.shape[0],), float(t))
                latents = hidden_states * (1.0 + latent_drift * i)
                outputs.append(model(latents, timestep, **other).sample)
    return outputs


class _CallCounter:
    """Counts forward calls of modules (torch forward pre-hooks)."""

    def __init__(self, modules):
        self.count = 0
        self._handles = [m.register_forward_pre_hook(self._hook) for m in modules]

    def _hook(self, module, args):
        self.count += 1

    def remove(self):
        for handle in self._handles:
            handle.remove()


def _self_attentions(model):
    return [block.attn1 for block in model.blocks]


# ----------------------------------------------------------------------------------------------------------------
# Parity with the original (goldens)
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden_meta():
    with open(GOLDEN_EXTRA / "cases.json") as f:
        return json.load(f)


def test_teacache_matches_original(pipe, golden_meta):
    case = golden_meta["teacache"]
    expected = extra_expected(case)
    transformer = pipe.transformer
    transformer.enable_cache(RuyiTeaCacheConfig(threshold=case["teacache_threshold"]))
    try:
        video = run_extra_case(pipe, case)
        skipped = get_ruyi_teacache_skipped_steps(transformer)
        # Same again: the state is reset between pipeline calls.
        again = run_extra_case(pipe, case)
    finally:
        transformer.disable_cache()
    assert (video - expected).abs().max().item() <= GOLDEN_TOL
    assert len(skipped) == case["original_skip_count"] == 4
    assert torch.equal(video, again)
    assert not any(hasattr(m, "_diffusers_hook") and m._diffusers_hook.hooks for m in transformer.blocks)


def test_enhance_a_video_matches_original(pipe, golden_meta):
    case = golden_meta["enhance_a_video"]
    expected = extra_expected(case)
    config = RuyiEnhanceAVideoConfig(
        weight=case["weight"], skip_start_steps=case["skip_start_steps"], skip_end_steps=case["skip_end_steps"]
    )
    apply_ruyi_enhance_a_video(pipe.transformer, config)
    try:
        video = run_extra_case(pipe, case)
    finally:
        remove_ruyi_enhance_a_video(pipe.transformer)
    assert (video - expected).abs().max().item() <= GOLDEN_TOL


@pytest.mark.parametrize("min_numel", [2048, 0])
def test_fp8_modes_select_the_original_layers(min_numel):
    # At 0, "lite"/"strong" take every plain Linear of the original: not its resampler's MultiheadAttention
    # out-projection, a plain Linear here.
    with open(GOLDEN_EXTRA / f"fp8_modules_min_numel_{min_numel}.json") as f:
        original = json.load(f)
    model = tiny_transformer()
    for mode in ("lite", "strong", "extreme"):
        assert sorted(select_fp8_modules(model, mode, min_numel=min_numel)) == sorted(original[mode]), mode
    assert select_fp8_modules(model, "none") == []
    with pytest.raises(ValueError):
        select_fp8_modules(model, "medium")


# ----------------------------------------------------------------------------------------------------------------
# TeaCache
# ----------------------------------------------------------------------------------------------------------------


def test_teacache_threshold_zero_computes_everything():
    model, inputs = tiny_transformer(), transformer_inputs()
    timesteps = [999, 800, 600, 400, 200, 1]
    baseline = _denoise(model, inputs, timesteps)
    model.enable_cache(RuyiTeaCacheConfig(threshold=0.0))
    counter = _CallCounter(_self_attentions(model))
    cached = _denoise(model, inputs, timesteps)
    assert get_ruyi_teacache_skipped_steps(model) == []
    assert counter.count == len(timesteps) * len(model.blocks)
    for a, b in zip(baseline, cached):
        assert torch.equal(a, b)


def test_teacache_skips_blocks_and_stays_close():
    model, inputs = tiny_transformer(), transformer_inputs()
    # Nearly identical steps: the rescaled distance stays below the threshold, so every eligible step is skipped.
    timesteps = [500, 499, 498, 497, 496, 495]
    baseline = _denoise(model, inputs, timesteps, latent_drift=1e-4)
    model.enable_cache(RuyiTeaCacheConfig(threshold=0.1, skip_start_steps=3, skip_end_steps=1))
    counter = _CallCounter(_self_attentions(model))
    cached = _denoise(model, inputs, timesteps, latent_drift=1e-4)
    # Steps 0-2 are warm-up, step 5 is the protected last step: 3 and 4 are skipped.
    assert get_ruyi_teacache_skipped_steps(model) == [3, 4]
    assert counter.count == 4 * len(model.blocks)
    for step, (a, b) in enumerate(zip(baseline, cached)):
        if step in (3, 4):
            assert not torch.equal(a, b)
            assert (a - b).abs().max() <= 5e-2 * a.abs().max()
        else:
            assert torch.equal(a, b)
    model.disable_cache()
    assert not model.is_cache_enabled
    counter.count = 0
    again = _denoise(model, inputs, timesteps, latent_drift=1e-4)
    assert counter.count == len(timesteps) * len(model.blocks)
    assert all(torch.equal(a, b) for a, b in zip(baseline, again))


def test_teacache_skipped_step_feeds_proj_out_the_originals_layout():
    # The original adds the cached residual to its block input, a transposed view of the patch embedding (tokens
    # fastest in memory); torch's linear then runs unfused, with another bfloat16 rounding than on a contiguous input.
    model, inputs = tiny_transformer().to(torch.bfloat16), transformer_inputs()
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    seen = []
    model.proj_out.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model.enable_cache(RuyiTeaCacheConfig(threshold=0.1, skip_start_steps=3, skip_end_steps=1))
    _denoise(model, inputs, [500, 499, 498, 497, 496, 495], latent_drift=1e-4)
    assert get_ruyi_teacache_skipped_steps(model) == [3, 4]
    for step, tokens in enumerate(seen):
        batch, length, channels = tokens.shape
        assert tokens.stride() == (
            (length * channels, 1, length) if step in (3, 4) else (length * channels, channels, 1)
        )
    weight, bias = model.proj_out.weight, model.proj_out.bias
    unfused = torch.matmul(seen[3], weight.t()) + bias  # what torch's linear does on the transposed layout
    assert torch.equal(model.proj_out(seen[3]), unfused)
    assert not torch.equal(model.proj_out(seen[3].contiguous()), unfused)  # the layout changes the bits


def test_teacache_without_step_info_counts_calls_and_resets():
    model, inputs = tiny_transformer(), transformer_inputs()
    timesteps = [500, 499, 498, 497, 496, 495]
    model.enable_cache(RuyiTeaCacheConfig(threshold=0.1))
    with pytest.raises(ValueError, match="num_inference_steps"):
        _denoise(model, inputs, timesteps, with_step_info=False)
    model.disable_cache()
    config = RuyiTeaCacheConfig(threshold=0.1, num_inference_steps=len(timesteps), offload_to_cpu=False)
    model.enable_cache(config)
    expected = _denoise(model, inputs, timesteps, latent_drift=1e-4)  # the pipeline's step information
    model.disable_cache()
    model.enable_cache(config)
    # The first call is step 0: the same steps are skipped, so the drifting latents give the same outputs.
    first = _denoise(model, inputs, timesteps, latent_drift=1e-4, with_step_info=False)
    assert get_ruyi_teacache_skipped_steps(model) == [3, 4]
    assert all(torch.equal(a, b) for a, b in zip(first, expected))
    # The counter wraps after `num_inference_steps` calls, so a second run repeats the first.
    second = _denoise(model, inputs, timesteps, latent_drift=1e-4, with_step_info=False)
    assert get_ruyi_teacache_skipped_steps(model) == [3, 4]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # A reset (as the pipeline's at the end of every call) restarts the count after an interrupted run.
    _denoise(model, inputs, timesteps[:2], with_step_info=False)
    model._reset_stateful_cache()
    third = _denoise(model, inputs, timesteps, latent_drift=1e-4, with_step_info=False)
    assert all(torch.equal(a, b) for a, b in zip(third, expected))
    # Outside any cache_context a default state is used.
    model._reset_stateful_cache()
    with torch.no_grad():
        model(
            inputs["hidden_states"],
            torch.full((2,), 500.0),
            **{k: v for k, v in inputs.items() if k != "hidden_states"},
        )


def test_teacache_cannot_stack_with_another_cache():
    model = tiny_transformer()
    model.enable_cache(RuyiTeaCacheConfig())
    with pytest.raises(ValueError, match="already been enabled"):
        model.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    model.disable_cache()
    model.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    model.disable_cache()


# ----------------------------------------------------------------------------------------------------------------
# diffusers' own caches on this model
# ----------------------------------------------------------------------------------------------------------------


def test_first_block_cache():
    model, inputs = tiny_transformer(), transformer_inputs()
    timesteps = [999, 700, 400, 100]
    baseline = _denoise(model, inputs, timesteps)
    model.enable_cache(FirstBlockCacheConfig(threshold=0.0))
    assert all(torch.equal(a, b) for a, b in zip(baseline, _denoise(model, inputs, timesteps)))
    model.disable_cache()

    model.enable_cache(FirstBlockCacheConfig(threshold=1e9))
    counter = _CallCounter(_self_attentions(model))
    cached = _denoise(model, inputs, timesteps)
    # The first step runs every block, later steps only the first block.
    assert counter.count == len(model.blocks) + (len(timesteps) - 1)
    assert torch.equal(cached[0], baseline[0])
    model.disable_cache()


def _count_self_attention(monkeypatch) -> dict:
    """``{"self": n}``, counting the self-attention processor calls from now on."""
    calls = {"self": 0}
    original_call = transformer_ruyi.RuyiAttnProcessor.__call__

    def counting_call(self, attn, *args, **kwargs):
        if not attn.is_cross_attention:
            calls["self"] += 1
        return original_call(self, attn, *args, **kwargs)

    monkeypatch.setattr(transformer_ruyi.RuyiAttnProcessor, "__call__", counting_call)
    return calls


def test_pyramid_attention_broadcast_skips_processor_calls(monkeypatch):
    model, inputs = tiny_transformer(), transformer_inputs()
    calls = _count_self_attention(monkeypatch)
    config = PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2,
        spatial_attention_timestep_skip_range=(-1, 1001),
        current_timestep_callback=lambda: 500,
    )
    model.enable_cache(config)
    _denoise(model, inputs, [999, 700, 400, 100])
    # Iterations 0 and 2 compute, 1 and 3 reuse the cached attention output.
    assert calls["self"] == 2 * len(model.blocks)
    model.disable_cache()


def test_pyramid_attention_broadcast_defaults_to_the_models_timestep(monkeypatch):
    model, inputs = tiny_transformer(), transformer_inputs()
    calls = _count_self_attention(monkeypatch)
    model.enable_cache(
        PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 800)
        )
    )
    _denoise(model, inputs, [999, 700, 400, 100])
    # 999 and 100 are outside (100, 800) and compute; inside, iteration 1 reuses and iteration 2 computes.
    assert calls["self"] == 3 * len(model.blocks)
    model.disable_cache()


def test_faster_cache_with_its_defaults():
    model, inputs = tiny_transformer(), transformer_inputs()
    timesteps = [999, 800, 600, 400, 200, 1]
    baseline = _denoise(model, inputs, timesteps)
    assert set(RuyiTransformer3DModel._cfg_batched_input_names) <= set(inspect.signature(model.forward).parameters)

    model.enable_cache(FasterCacheConfig())
    batch_sizes = []
    handle = model.blocks[0].register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    cached = _denoise(model, inputs, timesteps)
    handle.remove()
    # The unconditional half is skipped below timestep 641, except every 5th iteration: only the conditional half
    # (every batched input split, not just diffusers' default names) runs the blocks then.
    assert batch_sizes == [2, 2, 1, 1, 1, 2]
    assert all(out.shape == base.shape and torch.isfinite(out).all() for out, base in zip(cached, baseline))
    assert torch.equal(cached[0], baseline[0]) and torch.equal(cached[1], baseline[1])
    assert not torch.equal(cached[2], baseline[2])

    model.disable_cache()
    assert not model._diffusers_hook.hooks
    assert all(torch.equal(a, b) for a, b in zip(baseline, _denoise(model, inputs, timesteps)))


@pytest.mark.parametrize("config", [TextKVCacheConfig(), TaylorSeerCacheConfig()], ids=lambda c: type(c).__name__)
def test_cache_that_cannot_apply_raises(config):
    model = tiny_transformer()
    with pytest.raises(ValueError, match="found no layer of RuyiTransformer3DModel"):
        model.enable_cache(config)
    assert not model.is_cache_enabled
    assert not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks for m in model.modules())
    model.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    model.disable_cache()


def test_seacache_is_refused_rather_than_run_fail_open():
    # SeaCache needs a flow-matching sigma per step; without one diffusers computes every block and logs a line.
    from diffusers import SeaCacheConfig

    model = tiny_transformer()
    with pytest.raises(ValueError, match="SeaCacheConfig needs each step's flow-matching sigma"):
        model.enable_cache(SeaCacheConfig())
    assert not model.is_cache_enabled


def test_mag_cache():
    model, inputs = tiny_transformer(), transformer_inputs()
    timesteps = [999, 800, 600, 400, 200, 1]
    config = MagCacheConfig(
        threshold=10.0, max_skip_steps=2, retention_ratio=0.2, num_inference_steps=6, mag_ratios=[1.0] * 6
    )
    model.enable_cache(config)
    counter = _CallCounter(_self_attentions(model))
    outputs = _denoise(model, inputs, timesteps)
    assert counter.count < len(timesteps) * len(model.blocks)
    assert all(torch.isfinite(o).all() for o in outputs)
    model.disable_cache()


# ----------------------------------------------------------------------------------------------------------------
# Enhance-A-Video
# ----------------------------------------------------------------------------------------------------------------


def _reference_score(query, key, num_frames, weight):
    # Straightforward per-token loop over the definition (queries/keys laid out (B, T*S, N, C)).
    batch, seq, heads, dim = query.shape
    tokens = seq // num_frames
    q = query.reshape(batch, num_frames, tokens, heads, dim)
    k = key.reshape(batch, num_frames, tokens, heads, dim)
    means = []
    for b in range(batch):
        for s in range(tokens):
            for h in range(heads):
                attn = torch.softmax((q[b, :, s, h] @ k[b, :, s, h].T) / dim**0.5, dim=-1)
                off = attn.sum() - attn.diagonal().sum()
                means.append(off / (num_frames * (num_frames - 1)))
    return torch.clamp(torch.stack(means).mean() * (num_frames + weight), min=1)


def test_enhance_a_video_score_formula():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 3 * 5, 2, 8, generator=generator)
    key = torch.randn(2, 3 * 5, 2, 8, generator=generator)
    for weight in (0.0, 1.0, 4.0):
        torch.testing.assert_close(
            enhance_a_video_score(query, key, 3, weight), _reference_score(query, key, 3, weight)
        )
    assert enhance_a_video_score(query, key, 1, 1.0) is None


def test_enhance_a_video_steps_and_removal():
    model, inputs = tiny_transformer(), transformer_inputs()
    timesteps = [999, 700, 400, 100]
    baseline = _denoise(model, inputs, timesteps)
    apply_ruyi_enhance_a_video(model, RuyiEnhanceAVideoConfig(weight=2.0, skip_start_steps=1, skip_end_steps=1))
    with pytest.raises(ValueError, match="already applied"):
        apply_ruyi_enhance_a_video(model, RuyiEnhanceAVideoConfig(weight=1.0))
    enhanced = _denoise(model, inputs, timesteps)
    assert torch.equal(enhanced[0], baseline[0]) and torch.equal(enhanced[3], baseline[3])
    assert not torch.equal(enhanced[1], baseline[1]) and not torch.equal(enhanced[2], baseline[2])
    # Runs again identically after the pipeline-style reset, and combines with TeaCache.
    model._reset_stateful_cache()
    assert all(torch.equal(a, b) for a, b in zip(enhanced, _denoise(model, inputs, timesteps)))
    remove_ruyi_enhance_a_video(model)
    assert all(torch.equal(a, b) for a, b in zip(baseline, _denoise(model, inputs, timesteps)))
    apply_ruyi_enhance_a_video(model, RuyiEnhanceAVideoConfig(weight=2.0, skip_start_steps=1))
    enhanced_last = _denoise(model, inputs, timesteps)[3]
    assert not torch.equal(enhanced_last, baseline[3])
    remove_ruyi_enhance_a_video(model)
    # Without step information, `skip_end_steps` needs the number of steps (the config's); skipping none does not.
    apply_ruyi_enhance_a_video(model, RuyiEnhanceAVideoConfig(weight=2.0, skip_start_steps=1, skip_end_steps=1))
    with pytest.raises(ValueError, match="`skip_end_steps > 0` needs the number of denoising steps"):
        _denoise(model, inputs, timesteps, with_step_info=False)
    remove_ruyi_enhance_a_video(model)
    apply_ruyi_enhance_a_video(model, RuyiEnhanceAVideoConfig(weight=2.0, skip_start_steps=1))
    counted = _denoise(model, inputs, timesteps, with_step_info=False)
    assert torch.equal(counted[0], baseline[0]) and torch.equal(counted[3], enhanced_last)
    remove_ruyi_enhance_a_video(model)
    # A single frame has no cross-frame attention: unchanged.
    single = transformer_inputs(frames=1)
    apply_ruyi_enhance_a_video(model, RuyiEnhanceAVideoConfig(weight=2.0))
    with torch.no_grad():
        other = {k: v for k, v in single.items() if k != "hidden_states"}
        out = model(single["hidden_states"], torch.full((2,), 500.0), **other).sample
    remove_ruyi_enhance_a_video(model)
    with torch.no_grad():
        assert torch.equal(out, model(single["hidden_states"], torch.full((2,), 500.0), **other).sample)


# ----------------------------------------------------------------------------------------------------------------
# Memory: fp8, group offload, long-skip offload
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fp8_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_mode_stores_selected_layers(fp8_dtype):
    model, inputs = tiny_transformer(), transformer_inputs()
    baseline = _denoise(model, inputs, [500])[0]
    converted = apply_fp8_mode(model, "extreme", fp8_dtype, compute_dtype=torch.float32)
    modules = dict(model.named_modules())
    assert converted and all(p.dtype == fp8_dtype for n in converted for p in modules[n].parameters())
    assert modules["pos_embed.proj"].weight.dtype == torch.float32
    assert modules["blocks.0.attn1.norm_q"].weight.dtype == torch.float32
    assert model.dtype == torch.float32  # the compute dtype, as diffusers reports it under layerwise casting
    out = _denoise(model, inputs, [500])[0]
    assert torch.isfinite(out).all() and not torch.equal(out, baseline)
    assert (out - baseline).abs().mean() <= 0.25 * baseline.abs().mean()


def test_fp8_lite_is_a_subset_of_strong():
    model = tiny_transformer()
    lite, strong = select_fp8_modules(model, "lite", 2048), select_fp8_modules(model, "strong", 2048)
    assert set(lite) < set(strong)
    assert apply_fp8_mode(model, "none") == []


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_group_offload_identical(offload_type):
    model, inputs = tiny_transformer(), transformer_inputs()
    baseline = _denoise(model, inputs, [999, 500])
    kwargs = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
    model.enable_group_offload(
        torch.device("cpu"), offload_device=torch.device("cpu"), offload_type=offload_type, **kwargs
    )
    offloaded = _denoise(model, inputs, [999, 500])
    assert all(torch.equal(a, b) for a, b in zip(baseline, offloaded))


def test_teacache_goes_before_block_level_group_offload(tmp_path):
    # Added after the offload, TeaCache read `blocks[0].norm1` before the offloading hook loaded the block: from a
    # disk offload, empty weights (another video, no step skipped); on an accelerator, a device mismatch.
    inputs, steps = transformer_inputs(), [999, 800, 600, 400]
    config = RuyiTeaCacheConfig(threshold=0.3, skip_start_steps=1, skip_end_steps=1)
    alone = tiny_transformer()
    alone.enable_cache(config)
    expected = _denoise(alone, inputs, steps, latent_drift=0.01)
    assert get_ruyi_teacache_skipped_steps(alone)
    offload = dict(offload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    model = tiny_transformer()
    model.enable_group_offload(torch.device("cpu"), offload_to_disk_path=str(tmp_path / "a"), **offload)
    with pytest.raises(ValueError, match="TeaCache must be enabled before block-level group offloading"):
        model.enable_cache(config)
    model = tiny_transformer()
    model.enable_cache(config)
    model.enable_group_offload(torch.device("cpu"), offload_to_disk_path=str(tmp_path / "b"), **offload)
    got = _denoise(model, inputs, steps, latent_drift=0.01)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("group_size", [1, 2, 5])
def test_skip_offload_identical(monkeypatch, group_size):
    model, inputs = tiny_transformer(num_layers=8), transformer_inputs()
    baseline = _denoise(model, inputs, [500])[0]
    moves = []
    original_move = LongSkipStack._move

    def counting_move(self, tensor, device, memo):
        moves.append(device)
        return original_move(self, tensor, device, memo)

    monkeypatch.setattr(LongSkipStack, "_move", counting_move)
    apply_ruyi_skip_offload(model, RuyiSkipOffloadConfig(group_size=group_size))
    out = _denoise(model, inputs, [500])[0]
    assert torch.equal(out, baseline)
    # 8 layers: blocks 0-2 push a skip; every one is parked only when a full group was collected.
    parked = 3 - 3 % group_size
    assert len(moves) == 2 * parked
    remove_ruyi_skip_offload(model)
    moves.clear()
    assert torch.equal(_denoise(model, inputs, [500])[0], baseline) and not moves
    with pytest.raises(ValueError):
        RuyiSkipOffloadConfig(group_size=0)


# ----------------------------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------------------------


def test_block_has_no_graph_breaks():
    import torch._dynamo

    model, inputs = tiny_transformer(), transformer_inputs()
    captured = {}

    def grab(module, args, kwargs):
        captured.setdefault("args", args)
        captured.setdefault("kwargs", kwargs)

    handle = model.blocks[3].register_forward_pre_hook(grab, with_kwargs=True)
    _denoise(model, inputs, [500])
    handle.remove()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model.blocks[3])(*captured["args"], **captured["kwargs"])
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


def test_compile_repeated_blocks_fullgraph():
    import torch._dynamo

    model, inputs = tiny_transformer(), transformer_inputs()
    baseline = _denoise(model, inputs, [500])[0]
    torch._dynamo.reset()
    model.compile_repeated_blocks(fullgraph=True, backend="eager")
    out = _denoise(model, inputs, [500])[0]
    torch.testing.assert_close(out, baseline, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def _with_setting(model, setting):
    if setting == "first_block_cache":
        model.enable_cache(FirstBlockCacheConfig(threshold=0.5))
    elif setting == "teacache":
        model.enable_cache(RuyiTeaCacheConfig(threshold=0.5, skip_start_steps=1, skip_end_steps=1))
    elif setting == "fp8":
        apply_fp8_mode(model, "strong", torch.float8_e4m3fn, compute_dtype=torch.float32, min_numel=1)
    elif setting == "enhance_a_video":
        apply_ruyi_enhance_a_video(model, RuyiEnhanceAVideoConfig(weight=1.0))
    elif setting == "skip_offload":
        apply_ruyi_skip_offload(model, RuyiSkipOffloadConfig(group_size=1))
    return model


@pytest.mark.parametrize(
    "setting, fullgraph",
    [
        ("enhance_a_video", True),
        ("skip_offload", True),
        # Their hooks sit inside the blocks (a step counter, a decision read with `.item()`, parameter swaps): one
        # graph per block is impossible, graph breaks work.
        ("first_block_cache", False),
        ("teacache", False),
        ("fp8", False),
    ],
)
def test_compiled_blocks_with_hooks_give_the_uncompiled_outputs(setting, fullgraph):
    """What docs/memory_and_speed.md says of `compile_repeated_blocks` with the caches, fp8 and Enhance-A-Video."""
    import torch._dynamo

    # One graph for all the blocks: 12 of them, more than dynamo's 8 recompilations, would fail if each block needed
    # its own (as with a hook object per layer).
    layers = 12 if fullgraph else 4
    inputs, timesteps = transformer_inputs(), [900, 890, 880, 870]
    plain = _denoise(tiny_transformer(num_layers=layers), inputs, timesteps)
    hooked = _denoise(_with_setting(tiny_transformer(num_layers=layers), setting), inputs, timesteps)
    if setting != "skip_offload":  # skip offload moves tensors, nothing else
        assert any(not torch.equal(h, p) for h, p in zip(hooked, plain))  # the hook acts
    torch._dynamo.reset()
    try:
        model = _with_setting(tiny_transformer(num_layers=layers), setting)
        model.compile_repeated_blocks(fullgraph=fullgraph, backend="eager")
        compiled = _denoise(model, inputs, timesteps)
        for out, expected in zip(compiled, hooked):
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        if not fullgraph:
            torch._dynamo.reset()
            model = _with_setting(tiny_transformer(), setting)
            model.compile_repeated_blocks(fullgraph=True, backend="eager")
            with pytest.raises(torch._dynamo.exc.Unsupported):
                _denoise(model, inputs, timesteps)
    finally:
        torch._dynamo.reset()


def test_teacache_compiles_no_more_graphs_for_more_steps():
    # TeaCache's step bookkeeping runs outside the graphs: traced, the first block recompiled at every step (10
    # graphs for 4 steps, 14 for 8, until dynamo's limit left it uncompiled).
    import torch._dynamo
    from torch._dynamo.utils import counters

    def graphs(steps: int) -> int:
        torch._dynamo.reset()
        counters.clear()
        model = _with_setting(tiny_transformer(num_layers=12), "teacache")
        model.compile_repeated_blocks(fullgraph=False, backend="eager")
        _denoise(model, transformer_inputs(), list(range(900, 900 - 10 * steps, -10)))
        return counters["stats"]["unique_graphs"]

    try:
        assert graphs(4) == graphs(8)
    finally:
        torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------------------------
# Context parallelism (Ulysses, 2 CPU processes over gloo)
# ----------------------------------------------------------------------------------------------------------------


def _cp_worker(rank, world_size, port, queue):
    import torch.distributed as dist
    from diffusers import ContextParallelConfig, ParallelConfig
    from diffusers.hooks.context_parallel import apply_context_parallel

    from diffusers_ruyi.hooks import (
        RuyiEnhanceAVideoConfig,
        RuyiTeaCacheConfig,
        apply_ruyi_enhance_a_video,
        remove_ruyi_enhance_a_video,
    )

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model, inputs = tiny_transformer(), transformer_inputs(frames=4)
        timestep = torch.full((2,), 500.0)
        # Without CLIP tokens the CLIP attention attends over the video tokens: split too under context parallelism.
        runs = {"clip": inputs, "no_clip": {**inputs, "clip_encoder_hidden_states": None, "clip_attention_mask": None}}
        with torch.no_grad():
            expected = {name: model(timestep=timestep, **run).sample for name, run in runs.items()}
        # Hooks applied before parallelism is enabled are refused at the first call (before any all-to-all).
        apply_ruyi_enhance_a_video(model, RuyiEnhanceAVideoConfig(weight=4.0))
        model.enable_cache(RuyiTeaCacheConfig(threshold=0.1, num_inference_steps=4))
        # `enable_parallelism` needs an accelerator to pick the device; set up the same thing by hand on CPU.
        cp_config = ContextParallelConfig(ulysses_degree=world_size)
        mesh = torch.distributed.device_mesh.init_device_mesh(
            "cpu", mesh_shape=(1, world_size), mesh_dim_names=("ring", "ulysses")
        )
        cp_config.setup(rank, world_size, torch.device("cpu"), mesh)
        parallel_config = ParallelConfig(context_parallel_config=cp_config)
        for module in model.modules():
            if hasattr(getattr(module, "processor", None), "_parallel_config"):
                module.processor._parallel_config = parallel_config
        apply_context_parallel(model, cp_config, model._cp_plan)
        refusals = []

        def refused(call):
            try:
                with torch.no_grad():
                    call()
            except ValueError as e:
                return str(e)

        refusals.append(refused(lambda: model(timestep=timestep, **inputs)))  # Enhance-A-Video's hook
        remove_ruyi_enhance_a_video(model)
        refusals.append(refused(lambda: model(timestep=timestep, **inputs)))  # TeaCache's hook
        model.disable_cache()
        # ... and refused when applied to a context-parallel transformer.
        refusals.append(refused(lambda: apply_ruyi_enhance_a_video(model, RuyiEnhanceAVideoConfig())))
        refusals.append(refused(lambda: model.enable_cache(RuyiTeaCacheConfig(threshold=0.1))))
        shapes = []
        model.blocks[1].attn1.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
        with torch.no_grad():
            errors = {name: (model(timestep=timestep, **run).sample - expected[name]).abs().max().item()
                      for name, run in runs.items()}  # fmt: skip
        queue.put((rank, errors, shapes[0], refusals))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_context_parallel_ulysses_on_cpu():
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_cp_worker, args=(rank, 2, port, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert all(process.exitcode == 0 for process in processes)
    results = sorted(queue.get(timeout=5) for _ in processes)
    for rank, errors, shape, refusals in results:
        assert errors["clip"] <= 1e-5 and errors["no_clip"] <= 1e-5, errors
        assert shape == (2, 12, 32)  # each rank holds 2 of the 4 frames (2 x 3 tokens each)
        features = ["Enhance-A-Video", "TeaCache"] * 2
        for feature, message in zip(features, refusals):
            assert message is not None and message.startswith(f"{feature} does not support context parallelism")
