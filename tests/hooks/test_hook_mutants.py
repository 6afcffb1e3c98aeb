"""Hook behaviours that survived mutation testing (scripts/mutation.py); each test names the mutant it kills."""

import pytest
import torch
from _helpers import tiny_transformer, transformer_inputs

from diffusers_ruyi.hooks import RuyiTeaCacheConfig, get_ruyi_teacache_skipped_steps
from diffusers_ruyi.hooks.teacache import _get_head_hook


def test_teacache_frees_its_tensors_after_the_last_step():
    # Kills `step >= num_steps - 1` -> `step >= num_steps - 0` (hooks/teacache.py): the cached block input, residual
    # and modulated input are released after the last step, as the original does, not kept until the next run.
    model, inputs = tiny_transformer(), transformer_inputs(batch=1, frames=2, height=4, width=4)
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
        get_ruyi_teacache_skipped_steps(tiny_transformer())


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


@pytest.mark.parametrize("mode", ["lite", "extreme"])
def test_fp8_leaves_unfused_lora_layers_alone(mode):
    # Kills dropping the LoRA-prefix skip in select_fp8_modules (hooks/fp8.py): a LoRA-wrapped layer's base weight
    # and adapters stay in the compute dtype (fuse the LoRA first, as the CLI does, to store it in fp8).
    from peft import LoraConfig

    from diffusers_ruyi.hooks import select_fp8_modules

    model = tiny_transformer()
    plain = select_fp8_modules(model, mode, min_numel=0)
    assert "blocks.0.attn1.to_q" in plain
    model.add_adapter(LoraConfig(r=2, target_modules=["blocks.0.attn1.to_q"]))
    selected = select_fp8_modules(model, mode, min_numel=0)
    assert not [name for name in selected if name.startswith("blocks.0.attn1.to_q")]
    assert selected == [name for name in plain if name != "blocks.0.attn1.to_q"]


def test_caches_current_timestep_hook_reads_the_timestep_however_it_is_passed():
    # Kills `len(args) > 1` -> `>= 1`, `[0]` -> `[1]` and a dropped `not` in CurrentTimestepHook.pre_forward
    # (hooks/diffusers_caches.py): the timestep is the second positional argument or the `timestep` keyword, a tensor
    # of any batch (the first sample's) or a Python number; anything else is not a timestep.
    from diffusers_ruyi.hooks.diffusers_caches import CurrentTimestepHook

    hook, latents = CurrentTimestepHook(), torch.zeros(1)
    for args, kwargs, expected in [
        ((latents, torch.tensor([700.0, 300.0])), {}, 700.0),
        ((latents,), {"timestep": torch.tensor([250.0])}, 250.0),  # batch of one, by keyword
        ((), {"hidden_states": latents, "timestep": torch.tensor(10.0)}, 10.0),
        ((latents, 999), {}, 999.0),
        ((latents,), {"timestep": 12.5}, 12.5),
        ((latents, True), {}, None),
        ((latents,), {"timestep": "500"}, None),
    ]:
        assert hook.pre_forward(None, *args, **kwargs) == (args, kwargs)
        assert hook.timestep == expected, (args, kwargs)
    with pytest.raises(RuntimeError, match="only known while the transformer runs"):
        hook.current_timestep()


def test_skip_offload_stack_moves_a_tensor_pushed_again_once(monkeypatch):
    # Kills `return last[1]` -> `last[0]` in LongSkipStack._move (hooks/skip_offload.py): a tensor pushed again
    # unchanged (blocks skipped by a cache) reuses its copy, both ways, and the values come back in LIFO order.
    from diffusers_ruyi.hooks import RuyiSkipOffloadConfig
    from diffusers_ruyi.hooks.skip_offload import LongSkipStack

    moves = []
    real_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: moves.append(1) or real_to(self, *a, **k))
    stack = LongSkipStack(RuyiSkipOffloadConfig(group_size=1))
    a, b = torch.ones(3), torch.zeros(3)
    for tensor in (a, a, b):
        stack.push(tensor)
    assert len(moves) == 2  # a once, b once
    popped = [stack.pop(torch.device("cpu")) for _ in range(3)]
    assert len(moves) == 4 and all(isinstance(t, torch.Tensor) for t in popped)
    assert [t.tolist() for t in popped] == [b.tolist(), a.tolist(), a.tolist()]


def test_enhance_a_video_is_scoped_to_the_transformers_call():
    # Kills `self.runtime.active = False` -> `True` in RuyiEnhanceAVideoRootHook.post_forward
    # (hooks/enhance_a_video.py): after an enhanced step, the blocks' attention used on its own (outside the
    # transformer's call, e.g. a feature probe) is plain attention again.
    from diffusers_ruyi.hooks import RuyiEnhanceAVideoConfig, apply_ruyi_enhance_a_video, remove_ruyi_enhance_a_video

    model, inputs = tiny_transformer(), transformer_inputs()
    attn = model.blocks[0].attn1
    tokens = torch.randn(2, 4 * 2 * 3, attn.to_q.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = attn(tokens)
        apply_ruyi_enhance_a_video(model, RuyiEnhanceAVideoConfig(weight=4.0))
        try:
            enhanced_step = model(**inputs, timestep=torch.tensor([999.0, 999.0]), return_dict=False)[0]
            after = attn(tokens)
        finally:
            remove_ruyi_enhance_a_video(model)
        unenhanced_step = model(**inputs, timestep=torch.tensor([999.0, 999.0]), return_dict=False)[0]
    assert not torch.equal(enhanced_step, unenhanced_step)  # the step itself was enhanced
    assert torch.equal(after, plain)


def test_teacache_and_enhance_defaults_are_predict_i2v_settings():
    # Kills `threshold: float = 0.10` -> 1.1 in RuyiTeaCacheConfig (hooks/teacache.py): the documented defaults are
    # the original `predict_i2v.py`'s TeaCache and Enhance-A-Video settings.
    from diffusers_ruyi.hooks import RuyiEnhanceAVideoConfig

    teacache = RuyiTeaCacheConfig()
    assert (teacache.threshold, teacache.skip_start_steps, teacache.skip_end_steps) == (0.10, 3, 1)
    assert teacache.offload_to_cpu is True and teacache.num_inference_steps is None
    # The rescale polynomial of the original's transformer3d.py, highest power first (a digit off passed before).
    original = (-7.51185620e03, 2.32931511e03, -2.25610663e02, 9.39902237e00, -7.43067848e-02)
    assert teacache.coefficients == original
    enhance = RuyiEnhanceAVideoConfig()
    assert (enhance.weight, enhance.skip_start_steps, enhance.skip_end_steps) == (1.0, 0, 0)


def test_teacache_skipped_steps_default_to_the_most_recent_context():
    # Kills `list(skipped_steps)[-1]` -> `[not 1]` (the first) in get_ruyi_teacache_skipped_steps
    # (hooks/teacache.py): without a `context`, the skipped steps are those of the context used last.
    model, inputs = tiny_transformer(), transformer_inputs()
    model.enable_cache(RuyiTeaCacheConfig(threshold=100.0))
    try:
        with torch.no_grad():
            for context, steps in (("first", 6), ("second", 8)):
                for i in range(steps):
                    with model.cache_context(context, step_index=i, num_inference_steps=steps):
                        model(**inputs, timestep=torch.full((2,), 999.0 - i))
        first = get_ruyi_teacache_skipped_steps(model, context="first")
        second = get_ruyi_teacache_skipped_steps(model, context="second")
        assert (first, second) == ([3, 4], [3, 4, 5, 6])
        assert get_ruyi_teacache_skipped_steps(model) == second
    finally:
        model.disable_cache()


def test_enhance_a_video_acts_from_two_latent_frames():
    # Kills `num_frames > 1` -> `> 2` in RuyiEnhanceAVideoRootHook.pre_forward (hooks/enhance_a_video.py): two latent
    # frames (an 8-frame video) have cross-frame attention to enhance; one frame (an image) has none.
    from diffusers_ruyi.hooks import RuyiEnhanceAVideoConfig, apply_ruyi_enhance_a_video, remove_ruyi_enhance_a_video

    model = tiny_transformer()
    for frames, enhanced in ((1, False), (2, True)):
        inputs = transformer_inputs(frames=frames)
        with torch.no_grad():
            plain = model(**inputs, timestep=torch.tensor([999.0, 999.0]), return_dict=False)[0]
            apply_ruyi_enhance_a_video(model, RuyiEnhanceAVideoConfig(weight=4.0))
            try:
                output = model(**inputs, timestep=torch.tensor([999.0, 999.0]), return_dict=False)[0]
            finally:
                remove_ruyi_enhance_a_video(model)
        assert torch.equal(output, plain) != enhanced, frames


def test_faster_cache_keeps_identifiers_the_user_chose():
    # Kills `== tuple(default)` -> `<= tuple(default)` in fill_cache_defaults (hooks/diffusers_caches.py): only
    # diffusers' default identifiers are replaced by the inputs Ruyi batches for guidance; any others (here a prefix
    # of the default, which sorts before it) are the user's and are kept.
    from diffusers import FasterCacheConfig

    from diffusers_ruyi.hooks.diffusers_caches import fill_cache_defaults

    model = tiny_transformer()
    default = FasterCacheConfig()
    filled, _ = fill_cache_defaults(model, default)
    assert filled._unconditional_conditional_input_kwargs_identifiers == list(model._cfg_batched_input_names)
    chosen = FasterCacheConfig(_unconditional_conditional_input_kwargs_identifiers=["hidden_states"])
    filled, _ = fill_cache_defaults(model, chosen)
    assert filled._unconditional_conditional_input_kwargs_identifiers == ["hidden_states"]


def test_teacache_refuses_a_transformer_without_blocks():
    # Kills `or` -> `and` in apply_ruyi_teacache (hooks/teacache.py): an empty block list is refused by name.
    from diffusers_ruyi.hooks.teacache import apply_ruyi_teacache

    model = tiny_transformer()
    model.blocks = torch.nn.ModuleList()
    with pytest.raises(ValueError, match="TeaCache needs a Ruyi transformer with `blocks`"):
        apply_ruyi_teacache(model, RuyiTeaCacheConfig())


def test_teacache_offloads_its_residual_only_when_asked(monkeypatch):
    # Kills `torch.device("cpu") if self.config.offload_to_cpu else None` -> `if not ...` in the tail hook
    # (hooks/teacache.py). On a CPU the move is a no-op, so the spy records the device the tail hook asks for: its
    # residual is stored with `None` (stay where it is) unless `offload_to_cpu`; its other `move_to` reads the block
    # input back to the output's device. Every step computes (threshold 0), so no skipped step reads a residual.
    import sys

    from diffusers_ruyi.hooks import teacache

    move_to = teacache.move_to
    model, inputs = tiny_transformer(), transformer_inputs(batch=1, frames=2, height=4, width=4)
    hidden_states = inputs.pop("hidden_states")
    for offload in (False, True):
        asked = []

        def spy(tensor, device, _asked=asked):
            if sys._getframe(1).f_code.co_name == "new_forward":
                _asked.append(device)
            return move_to(tensor, device)

        monkeypatch.setattr(teacache, "move_to", spy)
        config = RuyiTeaCacheConfig(threshold=0.0, skip_start_steps=1, num_inference_steps=4, offload_to_cpu=offload)
        model.enable_cache(config)
        with torch.no_grad(), model.cache_context("cond_uncond"):
            for step in range(4):
                model(hidden_states, torch.full((1,), 500.0 - step), **inputs)
        model.disable_cache()
        assert asked and (None in asked) == (not offload), (offload, asked)


def test_teacache_applied_twice_to_a_model_without_cache_mixin_is_refused():
    # Kills `module.blocks[0]` -> `module.blocks[-1]` in `_has_teacache` (hooks/teacache.py): on a model without
    # `enable_cache`'s record (`_cache_config`) the head hook on the first block is what tells TeaCache is on; the
    # last block holds only a pass-through hook, and a second set of hooks would be stacked on the blocks.
    from diffusers_ruyi.hooks.teacache import apply_ruyi_teacache

    transformer = tiny_transformer()
    assert len(transformer.blocks) > 1
    model = torch.nn.Module()  # no CacheMixin: no `_cache_config`
    model.blocks, model.norm_out = transformer.blocks, transformer.norm_out
    apply_ruyi_teacache(model, RuyiTeaCacheConfig())
    with pytest.raises(ValueError, match=r"A cache is already enabled \(RuyiTeaCacheConfig\)"):
        apply_ruyi_teacache(model, RuyiTeaCacheConfig())


def test_a_reset_step_counter_starts_again_at_step_zero():
    # Kills `self.call_count = 0` -> `-1` in StepCounterState.reset (hooks/_common.py): without the pipeline's cache
    # context, a hook counts the steps itself, and a new run (the hooks are reset) starts at step 0 again.
    from diffusers_ruyi.hooks._common import StepCounterState, resolve_step

    class NoContext:
        def step_info(self):
            return None, None

    state = StepCounterState()
    assert [resolve_step(state, NoContext(), 10) for _ in range(3)] == [(0, 10), (1, 10), (2, 10)]
    state.reset()
    assert resolve_step(state, NoContext(), 10) == (0, 10)
