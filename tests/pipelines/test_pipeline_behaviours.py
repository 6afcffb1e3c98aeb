"""Pipeline behaviours the 3-step goldens cannot see: timing branches (CLIP apply ratio, guidance rescale,
Enhance-A-Video weight) and the other samplers against goldens of the original with more steps, and batches of different images against
single runs.

The goldens are `tests/fixtures/golden_extra/behaviour_*` (made by `make_behaviour_goldens.py` there).
"""

import json

import diffusers
import pytest
import torch
from _helpers import extra_expected, logged, open_rgb, run_extra_case

from diffusers_ruyi.cli import SCHEDULERS
from diffusers_ruyi.hooks import (
    RuyiEnhanceAVideoConfig,
    RuyiTeaCacheConfig,
    apply_ruyi_enhance_a_video,
    apply_ruyi_teacache,
    get_ruyi_teacache_skipped_steps,
    remove_ruyi_enhance_a_video,
    remove_ruyi_teacache,
)


GOLDEN_TOL = 1e-4


@pytest.fixture(scope="module")
def behaviour_cases(golden_dir):
    return json.loads((golden_dir.parent / "golden_extra" / "behaviour_cases.json").read_text())


@pytest.fixture(scope="module")
def images(golden_dir):
    """Three different pictures: the two start images and the end image of the goldens."""
    names = ["start_only_start.png", "start_end_start.png", "start_end_end.png"]
    return [open_rgb(golden_dir / n) for n in names]


# ----------------------------------------------------------------------------------------------------------------
# Timing branches against the original (6 steps: a branch taken one step early or late changes the video)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["clip_ratio", "clip_ratio_07"])
def test_clip_apply_ratio_matches_original(pipe, behaviour_cases, name):
    case = behaviour_cases[name]
    video = run_extra_case(pipe, case, clip_apply_ratio=case["clip_apply_ratio"])
    assert (video - extra_expected(case)).abs().max().item() <= GOLDEN_TOL


def test_clip_apply_ratio_uses_the_last_steps(pipe, images):
    """CLIP features go to the transformer in exactly the last `ratio` fraction of the steps."""
    seen = []
    forward = pipe.transformer.forward

    def spy(*args, **kwargs):
        seen.append(bool(kwargs["clip_attention_mask"].any()))
        return forward(*args, **kwargs)

    pipe.transformer.forward = spy
    try:
        for ratio, expected in ((0.4, [False] * 6 + [True] * 4), (0.0, [False] * 10), (1.0, [True] * 10)):
            seen.clear()
            pipe(image=images[0], num_frames=1, height=16, width=16, num_inference_steps=10,
                 clip_apply_ratio=ratio, output_type="latent")  # fmt: skip
            assert seen == expected, ratio
    finally:
        del pipe.transformer.forward


def test_guidance_rescale_matches_original(pipe, behaviour_cases):
    case = behaviour_cases["guidance_rescale"]
    video = run_extra_case(pipe, case, guidance_rescale=case["guidance_rescale"])
    assert (video - extra_expected(case)).abs().max().item() <= GOLDEN_TOL


@pytest.mark.parametrize("name", ["scheduler_dpmpp", "scheduler_euler", "scheduler_euler_a", "scheduler_pndm"])
def test_samplers_match_original(pipe, behaviour_cases, name):
    """Each `--scheduler` of the CLI, built as the CLI builds it, gives the original `predict_i2v.py` sampler's video.

    Euler A draws fresh noise at every step from the seed's generator, so it also pins that the pipeline draws from
    that generator only what the original does (the initial noise), not the VAE posterior samples.
    """
    case = behaviour_cases[name]
    original = pipe.scheduler
    cli_name = case["scheduler"].lower().replace(" ", "-")  # predict_i2v's "Euler A" is the CLI's euler-a
    pipe.scheduler = getattr(diffusers, SCHEDULERS[cli_name]).from_config(original.config)
    try:
        video = run_extra_case(pipe, case)
    finally:
        pipe.scheduler = original
    assert (video - extra_expected(case)).abs().max().item() <= GOLDEN_TOL


def _enhance_config(case) -> RuyiEnhanceAVideoConfig:
    """The Enhance-A-Video settings of a behaviour case, as the driver passed them to the original."""
    return RuyiEnhanceAVideoConfig(
        weight=case["enhance_weight"],
        skip_start_steps=case["enhance_skip_start"],
        skip_end_steps=case["enhance_skip_end"],
    )


def test_enhance_a_video_weight_matches_original(pipe, behaviour_cases):
    case = behaviour_cases["enhance_weight"]
    apply_ruyi_enhance_a_video(pipe.transformer, _enhance_config(case))
    try:
        video = run_extra_case(pipe, case)
    finally:
        remove_ruyi_enhance_a_video(pipe.transformer)
    assert (video - extra_expected(case)).abs().max().item() <= GOLDEN_TOL


def test_windows_count_steps_not_calls_with_pndm(pipe, behaviour_cases):
    """PNDM calls the model 17 times for 8 steps. The original counts the TeaCache and Enhance-A-Video windows in
    steps: TeaCache starts over after 8 calls (it skips calls 3, 4, 6, then 11 and 14) and Enhance-A-Video enhances
    calls 2-6 only."""
    case = behaviour_cases["pndm_teacache_enhance"]
    original = pipe.scheduler
    pipe.scheduler = diffusers.PNDMScheduler.from_config(original.config)
    apply_ruyi_teacache(
        pipe.transformer, RuyiTeaCacheConfig(threshold=case["teacache_threshold"], offload_to_cpu=False)
    )
    apply_ruyi_enhance_a_video(pipe.transformer, _enhance_config(case))
    try:
        video = run_extra_case(pipe, case)
        skipped = get_ruyi_teacache_skipped_steps(pipe.transformer)
    finally:
        remove_ruyi_enhance_a_video(pipe.transformer)
        remove_ruyi_teacache(pipe.transformer)
        pipe.scheduler = original
    assert len(skipped) == case["original_teacache_skip_count"]
    assert all(step % case["steps"] < case["steps"] - 1 for step in skipped) and max(skipped) >= case["steps"]
    assert (video - extra_expected(case)).abs().max().item() <= GOLDEN_TOL


# ----------------------------------------------------------------------------------------------------------------
# Batches: each video of a batch equals its own single run
# ----------------------------------------------------------------------------------------------------------------


def _run(pipe, image, seeds, **kwargs):
    args = dict(num_frames=8, height=32, width=48, num_inference_steps=2, output_type="pt")
    args.update(kwargs)
    generator = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return pipe(image=image, generator=generator, **args).frames


def test_batch_of_different_images_equals_single_runs(pipe, images):
    batch = _run(pipe, images[:2], [0, 1], last_image=[images[2], images[0]])
    first = _run(pipe, images[0], [0], last_image=images[2])
    second = _run(pipe, images[1], [1], last_image=images[0])
    assert (batch[0] - first[0]).abs().max().item() <= GOLDEN_TOL
    assert (batch[1] - second[0]).abs().max().item() <= GOLDEN_TOL
    assert (first[0] - second[0]).abs().max().item() > 1e-2  # the two videos do differ


def test_batch_with_several_videos_per_image_keeps_their_order(pipe, images):
    """`[a, b]` with two videos each gives `a, a, b, b`: conditioning is interleaved, not tiled."""
    batch = _run(pipe, images[:2], [0, 1, 2, 3], num_videos_per_prompt=2)
    first = _run(pipe, images[0], [0, 1], num_videos_per_prompt=2)
    second = _run(pipe, images[1], [2, 3], num_videos_per_prompt=2)
    assert (batch[:2] - first).abs().max().item() <= GOLDEN_TOL
    assert (batch[2:] - second).abs().max().item() <= GOLDEN_TOL


def test_generator_list_drives_each_videos_vae_samples(pipe, images):
    """Video k of a batch draws its VAE posterior samples from generator k, exactly as in its own single run.

    (The tiny VAE's posterior std is ~3e-7, far below the video tolerance, so the `inpaint_latents` are compared.)
    """

    def inpaint_latents(image, seeds, **kwargs):
        seen = {}

        def grab(p, i, t, callback_kwargs):
            seen["latents"] = callback_kwargs["inpaint_latents"]
            return {}

        _run(pipe, image, seeds, num_inference_steps=1, output_type="latent", callback_on_step_end=grab,
             callback_on_step_end_tensor_inputs=["inpaint_latents"], **kwargs)  # fmt: skip
        return seen["latents"].chunk(2)[1]  # the conditional half of the guidance batch

    batch = inpaint_latents(images[:2], [0, 1, 2, 3], num_videos_per_prompt=2)
    for k, seed in enumerate([0, 1, 2, 3]):
        assert torch.equal(batch[k], inpaint_latents(images[k // 2], [seed])[0]), k
    assert not torch.equal(batch[0], batch[1])


def test_batch_without_guidance_equals_single_runs(pipe, images):
    batch = _run(pipe, images[:2], [0, 1], guidance_scale=1.0)
    second = _run(pipe, images[1], [1], guidance_scale=1.0)
    assert (batch[1] - second[0]).abs().max().item() <= GOLDEN_TOL


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------


def test_one_frame_with_an_end_image_is_the_end_image(pipe, images):
    # As the original: the end image replaces the start frame, which stays the CLIP image (with a warning).
    video, mask, clip_images = pipe.prepare_conditioning_video([images[0]], [images[1]], 1, 16, 16)
    end, _, _ = pipe.prepare_conditioning_video([images[1]], None, 1, 16, 16)
    assert torch.equal(video, end) and mask.max() == 0
    assert clip_images[0].tobytes() == pipe.video_processor.resize(images[0].convert("RGB"), 16, 16).tobytes()
    out = pipe(image=images[0], last_image=images[1], num_frames=1, height=16, width=16, num_inference_steps=1)
    assert len(out.frames[0]) == 1
    # One frame without an end image is fine.
    out = pipe(image=images[0], num_frames=1, height=16, width=16, num_inference_steps=1, output_type="latent")
    assert out.frames.shape[2] == 1


def test_end_image_is_the_last_frame_condition(pipe, images):
    """The end image changes the video, and only through the last frame's conditioning."""
    video, mask, _ = pipe.prepare_conditioning_video([images[0]], [images[1]], 8, 32, 48)
    assert mask[0, 0, 0].max() == 0 and mask[0, 0, -1].max() == 0 and mask[0, 0, 1:-1].min() == 1
    plain, plain_mask, _ = pipe.prepare_conditioning_video([images[0]], None, 8, 32, 48)
    assert torch.equal(video[:, :, :-1], plain[:, :, :-1]) and not torch.equal(video[:, :, -1], plain[:, :, -1])
    assert plain_mask[0, 0, -1].min() == 1


def test_bucket_sizes_match_the_original(golden_dir):
    """`get_bucket_size` picks what the original `predict_i2v.py` picks, for every bucket of the table (exact, just
    above and below, between neighbours) at several base resolutions."""
    from diffusers_ruyi.pipelines.controls import get_bucket_size

    cases = json.loads((golden_dir.parent / "golden_extra" / "buckets.json").read_text())["cases"]
    wrong = [
        (h, w, base, (eh, ew), get_bucket_size(h, w, base))
        for h, w, base, eh, ew in cases
        if get_bucket_size(h, w, base) != (eh, ew)
    ]
    assert wrong == []


def test_guidance_rescale_per_video_in_a_batch(pipe, images):
    """The std ratio of guidance rescale is taken per video, so a batch equals its single runs."""
    batch = _run(pipe, images[:2], [0, 1], guidance_rescale=0.7)
    second = _run(pipe, images[1], [1], guidance_rescale=0.7)
    assert (batch[1] - second[0]).abs().max().item() <= GOLDEN_TOL
    assert (batch[1] - _run(pipe, images[1], [1])[0]).abs().max().item() > 1e-3


def test_properties_after_a_call(pipe, images):
    kwargs = {"scale": 1.0}
    pipe(image=images[0], num_frames=1, height=16, width=16, num_inference_steps=3, guidance_scale=2.5,
         attention_kwargs=kwargs, output_type="latent")  # fmt: skip
    assert pipe.num_timesteps == 3 and pipe.guidance_scale == 2.5 and pipe.attention_kwargs is kwargs
    assert pipe.do_classifier_free_guidance and pipe.current_timestep is None
    # Without a LoRA the scale changes nothing: said once per call, not silently ignored.
    with logged("diffusers_ruyi.pipelines.pipeline_ruyi_i2v") as records:
        pipe(image=images[0], num_frames=1, height=16, width=16, num_inference_steps=1, attention_kwargs=kwargs,
             output_type="latent")  # fmt: skip
        pipe(image=images[0], num_frames=1, height=16, width=16, num_inference_steps=1, output_type="latent")
    said = [r.getMessage() for r in records if "scales loaded LoRAs" in r.getMessage()]
    assert said == [
        "`attention_kwargs={'scale': 1.0}` scales loaded LoRAs, and the transformer has none: it changes nothing."
    ]


def test_posterior_generator_leaves_the_seed_alone():
    """The VAE posterior draws from a generator made from the seed's state: the seed's own stream is untouched (so a
    stochastic sampler gets the original's noise), the same state gives the same samples, and a generator used again
    (a training loop) gives new ones."""
    from diffusers_ruyi.pipelines.pipeline_ruyi_i2v import _posterior_generator

    generator = torch.Generator().manual_seed(0)
    before = generator.get_state()
    first = torch.randn(64, generator=_posterior_generator(generator))
    assert torch.equal(generator.get_state(), before)
    assert torch.equal(first, torch.randn(64, generator=_posterior_generator(generator)))
    assert not torch.equal(first, torch.randn(64, generator=torch.Generator().manual_seed(0)))  # another stream
    torch.randn(8, generator=generator)
    assert not torch.equal(first, torch.randn(64, generator=_posterior_generator(generator)))
    assert _posterior_generator(None) is None
