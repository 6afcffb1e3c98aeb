import copy
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import PIL.Image
import pytest
import torch
from _helpers import TINY_REALFMT_CHECKPOINT, fake_snapshot_download, files_under, load_golden_case, logged, run_case
from diffusers import (
    AutoModel,
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from diffusers_ruyi import (
    AutoencoderKLRuyiCausal3D,
    RuyiImageToVideoPipeline,
    RuyiPipelineOutput,
    RuyiTransformer3DModel,
)
from diffusers_ruyi.pipelines.controls import CAMERA_DIRECTIONS, MOTION_VALUES, get_bucket_size


def _call(pipe, image, **kwargs):
    args = dict(
        image=image,
        num_frames=8,
        height=32,
        width=48,
        num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="pt",
    )
    args.update(kwargs)
    return pipe(**args)


@pytest.mark.parametrize("case_name", ["start_only", "start_end"])
def test_end_to_end_matches_original(pipe, golden_dir, case_name):
    case, start, end, expected = load_golden_case(golden_dir, "cases.json", case_name)
    video = run_case(pipe, case, start, end)
    assert tuple(video.shape) == tuple(case["video_shape"])
    assert (video - expected).abs().max().item() <= 1e-4


def test_save_pretrained_round_trip(pipe, start_image, tmp_path):
    expected = _call(pipe, start_image).frames
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers_ruyi", "RuyiTransformer3DModel"]
    assert index["control_embeddings"] == ["diffusers_ruyi", "RuyiControlEmbeddings"]
    reloaded = RuyiImageToVideoPipeline.from_pretrained(tmp_path, dtype=torch.float32)
    reloaded.set_progress_bar_config(disable=True)
    assert torch.equal(_call(reloaded, start_image).frames, expected)


def test_push_to_hub_uploads_the_package_names(pipe, tmp_path, monkeypatch):
    # The hub copy must be the folder as saved: the index is written with the package's names before the upload.
    import diffusers.pipelines.pipeline_utils as pipeline_utils

    uploaded = {}

    class Card:
        def save(self, path):
            pass

    monkeypatch.setattr(pipeline_utils, "create_repo", lambda repo_id, **_: types.SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(pipeline_utils, "load_or_create_model_card", lambda *_, **__: Card())
    monkeypatch.setattr(pipeline_utils, "populate_model_card", lambda card, *_, **__: card)

    def upload(self, folder, repo_id, **_):
        uploaded[repo_id] = json.loads((pathlib.Path(folder) / "model_index.json").read_text())

    monkeypatch.setattr(RuyiImageToVideoPipeline, "_upload_folder", upload, raising=False)
    pipe.save_pretrained(str(tmp_path), push_to_hub=True, repo_id="me/ruyi")
    assert uploaded["me/ruyi"]["transformer"] == ["diffusers_ruyi", "RuyiTransformer3DModel"]
    assert uploaded["me/ruyi"]["vae"] == ["diffusers_ruyi", "AutoencoderKLRuyiCausal3D"]
    assert uploaded["me/ruyi"] == json.loads((tmp_path / "model_index.json").read_text())


def test_a_folder_saved_in_bfloat16_loads_in_float32_by_default(tiny_checkpoint, tmp_path):
    # As the original layout does; transformers 5 alone would keep the CLIP tower in its file's bfloat16.
    RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16).save_pretrained(tmp_path)
    loaded = RuyiImageToVideoPipeline.from_pretrained(tmp_path)
    assert loaded.transformer.dtype == loaded.vae.dtype == loaded.image_encoder.dtype == torch.float32
    assert RuyiImageToVideoPipeline.from_pretrained(tmp_path, dtype="bfloat16").image_encoder.dtype == torch.bfloat16


def test_saved_folder_loads_like_any_diffusers_pipeline(pipe, start_image, tmp_path):
    expected = _call(pipe, start_image).frames
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path, torch_dtype=torch.float32)
    assert type(loaded) is RuyiImageToVideoPipeline
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(_call(loaded, start_image).frames, expected)
    # diffusers' loading options on a saved folder (an empty `_keep_in_fp32_modules` used to refuse the first).
    for kwargs in ({"low_cpu_mem_usage": False}, {"device_map": "cpu"}):
        other = RuyiImageToVideoPipeline.from_pretrained(tmp_path, **kwargs)
        other.set_progress_bar_config(disable=True)
        assert torch.equal(_call(other, start_image).frames, expected), kwargs
    # (diffusers' AutoModel takes the path as a string.)
    assert type(AutoModel.from_pretrained(str(tmp_path), subfolder="transformer")) is RuyiTransformer3DModel
    assert type(AutoModel.from_pretrained(str(tmp_path / "transformer"))) is RuyiTransformer3DModel
    assert type(AutoModel.from_pretrained(str(tmp_path / "vae"))) is AutoencoderKLRuyiCausal3D


def test_diffusers_finds_the_pipeline_whatever_the_import_order(pipe, tmp_path):
    """In a fresh interpreter `import diffusers_ruyi` comes before diffusers is imported, unlike in this test session."""
    pipe.save_pretrained(tmp_path)
    code = (
        "import importlib.util, sys, diffusers_ruyi\n"
        "from diffusers_ruyi._registration import _InstallAfterDiffusersImport as Finder\n"
        "assert 'diffusers' not in sys.modules\n"
        # An availability probe first, as peft and transformers make: it used up the one-shot registration.
        "assert importlib.util.find_spec('diffusers') is not None\n"
        "from diffusers import DiffusionPipeline\n"
        "assert not any(isinstance(finder, Finder) for finder in sys.meta_path)  # gone once diffusers is imported\n"
        f"print(type(DiffusionPipeline.from_pretrained({str(tmp_path)!r})).__name__)\n"
    )
    root = str(pathlib.Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "RuyiImageToVideoPipeline"


def test_output_types(pipe, start_image):
    pt = _call(pipe, start_image).frames
    assert pt.shape == (1, 8, 3, 32, 48) and 0.0 <= pt.min() and pt.max() <= 1.0
    np_frames = _call(pipe, start_image, output_type="np").frames
    assert isinstance(np_frames, np.ndarray) and np_frames.shape == (1, 8, 32, 48, 3)
    np.testing.assert_allclose(np_frames, pt.permute(0, 1, 3, 4, 2).numpy(), atol=1e-6)
    pil = _call(pipe, start_image, output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == 8 and pil[0][0].size == (48, 32)
    latent = _call(pipe, start_image, output_type="latent").frames
    assert latent.shape == (1, 16, 2, 4, 6)
    as_tuple = _call(pipe, start_image, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], pt)


def test_num_videos_per_prompt_and_generator_list(pipe, start_image):
    out = _call(pipe, start_image, num_videos_per_prompt=2, generator=None).frames
    assert out.shape == (2, 8, 3, 32, 48)
    gens = [torch.Generator("cpu").manual_seed(0), torch.Generator("cpu").manual_seed(1)]
    out = _call(pipe, start_image, num_videos_per_prompt=2, generator=gens).frames
    single = _call(pipe, start_image).frames
    # The first video of the batch uses the same seed as the single call.
    assert (out[0] - single[0]).abs().max() < 1e-4
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_callback_on_step_end_and_interrupt(pipe, start_image):
    seen = []

    def callback(p, i, t, kwargs):
        seen.append((i, int(t), tuple(kwargs["latents"].shape), tuple(kwargs["inpaint_latents"].shape)))
        return {"latents": torch.zeros_like(kwargs["latents"])}

    out = _call(pipe, start_image, callback_on_step_end=callback, output_type="latent",
                callback_on_step_end_tensor_inputs=["latents", "inpaint_latents"])  # fmt: skip
    assert [s[0] for s in seen] == [0, 1]
    assert seen[0][2] == (1, 16, 2, 4, 6) and seen[0][3] == (2, 32, 2, 4, 6)
    assert torch.count_nonzero(out.frames) == 0  # the callback's replacement was used

    steps = []

    def stop(p, i, t, kwargs):
        steps.append(i)
        p._interrupt = True
        return {}

    _call(pipe, start_image, num_inference_steps=4, callback_on_step_end=stop, output_type="latent")
    assert steps == [0]


@pytest.mark.parametrize(
    "output_type, said", [("np", "the frames hold them."), ("pt", "the frames hold them."), ("pil", "black pixels.")]
)
def test_a_decoded_video_holding_nan_is_named_in_a_warning(pipe, start_image, output_type, said):
    # Huge (finite) latents decode to NaN: "np"/"pt" frames keep it, "pil" frames show black pixels.
    with logged("diffusers_ruyi.pipelines.pipeline_ruyi_i2v") as records:
        frames = _call(pipe, start_image, latents=torch.full((1, 16, 2, 4, 6), 1e30), output_type=output_type).frames
    warnings = [r.getMessage() for r in records if "holds NaN or infinite values" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].endswith(said)
    if output_type != "pil":
        assert not np.isfinite(np.asarray(frames)).all()
    with logged("diffusers_ruyi.pipelines.pipeline_ruyi_i2v") as records:
        _call(pipe, start_image, output_type=output_type)
    assert not any("holds NaN" in r.getMessage() for r in records)


@pytest.mark.parametrize("wrapping", ["plain", "multi", "nested multi", "subclass"])
def test_a_cfg_cutoff_callback_is_refused_before_any_step(guarded_pipe, start_image, wrapping):
    # It was refused after its cutoff step (half the steps), with a shape error.
    from diffusers.callbacks import MultiPipelineCallbacks, SDCFGCutoffCallback

    class StopGuidance(SDCFGCutoffCallback):
        pass

    callback = (StopGuidance if wrapping == "subclass" else SDCFGCutoffCallback)(cutoff_step_ratio=0.5)
    if "multi" in wrapping:
        callback = MultiPipelineCallbacks([callback])
    if wrapping == "nested multi":
        callback = MultiPipelineCallbacks([callback])
    with pytest.raises(
        ValueError, match="(CFGCutoffCallback|StopGuidance) cuts the batch in half.*`pipe._guidance_scale = 1.0`"
    ):
        _call(guarded_pipe, start_image, guidance_scale=7.0, callback_on_step_end=callback)

    from diffusers.callbacks import IPAdapterScaleCutoffCallback

    with pytest.raises(ValueError, match="IPAdapterScaleCutoffCallback sets an IP-Adapter scale"):
        _call(guarded_pipe, start_image, callback_on_step_end=IPAdapterScaleCutoffCallback(cutoff_step_ratio=0.5))


def test_a_callback_named_like_a_cutoff_runs(pipe, start_image):
    # A callback of the user's own is not judged by its name: one that does what the refusal says runs.
    from diffusers.callbacks import PipelineCallback

    class EndCFGCutoff(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            pipeline._guidance_scale = 1.0
            return callback_kwargs

    callback = EndCFGCutoff(cutoff_step_ratio=0.5)
    assert _call(
        pipe, start_image, guidance_scale=7.0, callback_on_step_end=callback, output_type="latent"
    ).frames.shape


def test_a_callback_sets_the_guidance_of_the_later_steps(pipe, start_image):
    # The loop mixed with the call's argument (a callback's `_guidance_scale` did nothing, while `guidance_scale`
    # reported it), and read `do_classifier_free_guidance` again every step (1 or below: a batch-size error).
    def guidance_from_step_1(scale):
        def callback(p, i, t, kwargs):
            if i == 0:
                p._guidance_scale = scale
            return kwargs

        out = _call(pipe, start_image, guidance_scale=7.0, callback_on_step_end=callback, output_type="latent")
        assert pipe.guidance_scale == scale
        return out.frames

    unchanged = _call(pipe, start_image, guidance_scale=7.0, output_type="latent").frames
    assert torch.equal(guidance_from_step_1(7.0), unchanged)
    lower, middle = guidance_from_step_1(3.0), guidance_from_step_1(5.0)
    assert (lower - unchanged).abs().max() > 1e-4
    # The last step is affine in its guidance scale: 5 lands halfway between 3 and 7.
    torch.testing.assert_close(middle, (lower + unchanged) / 2, atol=1e-5, rtol=0)
    # Guidance off from step 1 on: the conditional prediction alone, in the same batch of two.
    assert torch.isfinite(guidance_from_step_1(1.0)).all() and torch.isfinite(guidance_from_step_1(0.0)).all()

    # A run without guidance cannot turn it on: no negative branch was prepared.
    def turn_on(p, i, t, kwargs):
        p._guidance_scale = 7.0
        return kwargs

    unguided = _call(pipe, start_image, guidance_scale=1.0, output_type="latent").frames
    assert torch.equal(
        _call(pipe, start_image, guidance_scale=1.0, callback_on_step_end=turn_on, output_type="latent").frames,
        unguided,
    )


@pytest.mark.parametrize(
    "returned, error, match",
    [
        (None, TypeError, r"`callback_on_step_end` must return a dict .*, got NoneType"),
        (
            {"latent": None},
            ValueError,
            r"`callback_on_step_end` returned \['latent'\], which the pipeline does not take",
        ),
        # A wrong shape failed in the next step, naming `inpaint_latents`; NaN turned the video to NaN.
        (lambda k: {"latents": k["latents"][:, :, :1]}, ValueError, r"returned `latents` of shape \(1, 16, 1,"),
        (lambda k: {"latents": 3}, TypeError, r"returned `latents` as int; it must be a floating-point tensor"),
        (lambda k: {"latents": k["latents"].long()}, TypeError, r"returned `latents` as torch.int64"),
        (lambda k: {"latents": k["latents"] * float("nan")}, ValueError, r"`latents` holding NaN or infinite"),
        # Finite in float64, infinite in the pipeline's float32.
        (lambda k: {"latents": k["latents"].double() * 1e300}, ValueError, r"`latents` holding NaN or infinite"),
    ],
)
def test_what_a_callback_returns_is_checked(pipe, start_image, returned, error, match):
    # A misspelt tensor name was dropped without a word, `None` failed on an attribute.
    def callback(p, i, t, kwargs):
        return returned(kwargs) if callable(returned) else returned

    with pytest.raises(error, match=match):
        _call(pipe, start_image, num_inference_steps=2, callback_on_step_end=callback, output_type="latent")
    # Returned as they came, or replaced by a tensor of the same shape, they go on.
    _call(pipe, start_image, num_inference_steps=2, callback_on_step_end=lambda p, i, t, k: k, output_type="latent")


@pytest.mark.parametrize("name", ["latents", "prompt_embeds", "inpaint_latents"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_callback_tensor_of_another_float_dtype_is_cast_back(pipe, start_image, name, dtype):
    # Arithmetic with a float32 tensor promotes bfloat16 latents: another dtype ran the rest of the call in it
    # (`latents`) or failed in the next step under the transformer's argument names. It is cast, as `latents=` is.
    def callback(cast_back: bool):
        def edit(p, i, t, kwargs):
            value = (kwargs[name] * 0.5).to(dtype)
            return {name: value.float() if cast_back else value}

        return edit

    args = dict(num_inference_steps=2, output_type="latent", callback_on_step_end_tensor_inputs=[name])
    expected = _call(pipe, start_image, callback_on_step_end=callback(True), **args)
    got = _call(pipe, start_image, callback_on_step_end=callback(False), **args)
    assert got.frames.dtype == torch.float32
    torch.testing.assert_close(got.frames, expected.frames, atol=0, rtol=0)


@pytest.mark.parametrize(
    "scheduler_cls, steps, match",
    [
        (DDIMScheduler, 1000, r"IndexError: index 1000 is out of bounds.*Use at most 999 steps"),
        (DPMSolverMultistepScheduler, 999, r"its last steps return NaN\. Use at most 998 steps"),
        (DDPMScheduler, 1000, r"IndexError: index 1000 is out of bounds.*Use at most 999 steps"),
    ],
)
def test_a_schedule_that_would_fail_mid_run_is_refused_before_any_model(
    guarded_pipe, start_image, scheduler_cls, steps, match
):
    from diffusers_ruyi._validation import schedule_problem

    original = guarded_pipe.scheduler
    guarded_pipe.scheduler = scheduler_cls.from_config(original.config)
    try:
        with pytest.raises(
            ValueError, match=f"{scheduler_cls.__name__} cannot run num_inference_steps={steps}.*{match}"
        ):
            _call(guarded_pipe, start_image, num_inference_steps=steps)
        assert (
            schedule_problem(guarded_pipe.scheduler, steps - 1) is None or scheduler_cls is DPMSolverMultistepScheduler
        )
    finally:
        guarded_pipe.scheduler = original
    # Euler interpolates between sigmas: all 1000 steps run.
    assert schedule_problem(EulerDiscreteScheduler.from_config(original.config), 1000) is None


_ACCEPTED_SCHEDULERS = (
    "DDIMScheduler DDPMScheduler DDPMParallelScheduler EulerDiscreteScheduler EulerAncestralDiscreteScheduler "
    "DPMSolverMultistepScheduler DPMSolverSinglestepScheduler PNDMScheduler HeunDiscreteScheduler "
    "KDPM2DiscreteScheduler KDPM2AncestralDiscreteScheduler DEISMultistepScheduler UniPCMultistepScheduler "
    "SASolverScheduler LCMScheduler TCDScheduler CogVideoXDDIMScheduler"
).split()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy's, from inside diffusers' SA-Solver
@pytest.mark.parametrize("name", _ACCEPTED_SCHEDULERS)
def test_the_dry_run_passes_every_accepted_scheduler_on_the_published_config(name):
    # DDPM read `sample.shape[1]` of a one-element 1-D stand-in: every call was refused, "use at most None steps".
    import diffusers

    from diffusers_ruyi._validation import schedule_problem

    config = json.loads((TINY_REALFMT_CHECKPOINT / "scheduler" / "scheduler_config.json").read_text())
    scheduler = getattr(diffusers, name).from_config(config)
    for steps in (2, 25, 50):
        assert schedule_problem(scheduler, steps) is None, (name, steps)


def test_ddpm_from_the_published_config_runs(pipe, start_image):
    original = pipe.scheduler
    config = json.loads((TINY_REALFMT_CHECKPOINT / "scheduler" / "scheduler_config.json").read_text())
    pipe.scheduler = DDPMScheduler.from_config({**config, "prediction_type": original.config.prediction_type})
    try:
        video = _call(pipe, start_image, num_inference_steps=2, output_type="latent").frames
    finally:
        pipe.scheduler = original
    assert torch.isfinite(video).all()


def test_check_num_inference_steps_checks_without_changing_the_scheduler(pipe):
    pipe.scheduler.set_timesteps(7)
    before = pipe.scheduler.timesteps.clone()
    pipe.check_num_inference_steps(999)
    with pytest.raises(ValueError, match=r"DDIMScheduler cannot run num_inference_steps=1000 .*Use at most 999"):
        pipe.check_num_inference_steps(1000)
    with pytest.raises(TypeError, match=r"`num_inference_steps` must be a positive integer, got float 2.0"):
        pipe.check_num_inference_steps(2.0)
    assert torch.equal(pipe.scheduler.timesteps, before)


def test_a_scheduler_the_dry_run_cannot_judge_is_left_to_run():
    # One that fails the stand-in run at every count fails on the stand-in, not on the count: not refused.
    from diffusers_ruyi._validation import schedule_problem

    scheduler = DDIMScheduler()

    def step(*args, **kwargs):
        raise IndexError("a scheduler that needs real latents")

    scheduler.step = step
    assert schedule_problem(scheduler, 25) is None


def test_a_callback_editing_the_control_embeddings_in_place_leaves_the_stored_ones(pipe, start_image):
    # Without guidance nothing copied them: `mul_` on the callback's `prompt_embeds` changed every later call.
    stored = pipe.control_embeddings.emb1.clone()

    def damp(p, i, t, kwargs):
        kwargs["prompt_embeds"].mul_(0.5)
        return kwargs

    _call(pipe, start_image, num_inference_steps=2, guidance_scale=1.0, output_type="latent",
          callback_on_step_end=damp, callback_on_step_end_tensor_inputs=["prompt_embeds"])  # fmt: skip
    assert torch.equal(pipe.control_embeddings.emb1, stored)


@pytest.mark.parametrize(
    "scheduler_cls",
    [EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler, PNDMScheduler],
)
def test_scheduler_swap(pipe, start_image, scheduler_cls):
    original = pipe.scheduler
    # PNDM's Runge-Kutta warm-up needs a few steps.
    base = _call(pipe, start_image, num_inference_steps=5).frames
    try:
        pipe.scheduler = scheduler_cls.from_config(original.config)
        out = _call(pipe, start_image, num_inference_steps=5).frames
    finally:
        pipe.scheduler = original
    assert out.shape == base.shape and torch.isfinite(out).all()
    assert not torch.equal(out, base)
    assert isinstance(pipe.scheduler, DDIMScheduler)


@pytest.mark.parametrize(
    "scheduler, why",
    [
        # Made from Ruyi's config, it carries prediction_type='v_prediction' along: the schedule is what it lacks.
        (FlowMatchEulerDiscreteScheduler.from_config({"prediction_type": "v_prediction"}), "no DDPM noise schedule"),
        (DDIMScheduler(prediction_type="epsilon"), "prediction_type='epsilon'"),
    ],
    ids=["flow_matching", "epsilon"],
)
def test_schedulers_that_cannot_run_ruyi_are_refused(pipe, tiny_checkpoint, scheduler, why):
    original = pipe.scheduler
    message = f"{type(scheduler).__name__} \\({why}\\) cannot run Ruyi.*v-prediction"
    with pytest.raises(ValueError, match=message):
        pipe.scheduler = scheduler
    assert pipe.scheduler is original
    with pytest.raises(ValueError, match=message):
        RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint, scheduler=scheduler)


def _step_needs_more():
    from diffusers import CogVideoXDPMScheduler

    return CogVideoXDPMScheduler.from_config(DDIMScheduler(prediction_type="v_prediction").config)


@pytest.mark.parametrize(
    "make, message",
    [
        # They run without error and return no video: one walks from the data to noise, the other replaces the DDPM
        # schedule by flow sigmas.
        (lambda: DDIMInverseScheduler(prediction_type="v_prediction"), r"\(an inverse scheduler\) cannot run Ruyi"),
        (
            lambda: UniPCMultistepScheduler(prediction_type="v_prediction", use_flow_sigmas=True),
            r"\(use_flow_sigmas=True\) cannot run Ruyi",
        ),
        # Its step needs the previous prediction and timestep: it failed in the first step, after the encoders ran.
        (_step_needs_more, r"CogVideoXDPMScheduler.step cannot be called as step\(model_output, timestep, sample,"),
    ],
    ids=["inverse", "flow_sigmas", "step_signature"],
)
def test_schedulers_that_run_but_cannot_sample_ruyi_are_refused(pipe, make, message):
    original = pipe.scheduler
    with pytest.raises(ValueError, match=message):
        pipe.scheduler = make()
    assert pipe.scheduler is original

    # The DDPM-family schedulers Ruyi's config makes are all accepted, and so is a subclass whose step forwards its
    # arguments (`*args, **kwargs`).
    class LoggingDDIM(DDIMScheduler):
        def step(self, *args, **kwargs):
            return super().step(*args, **kwargs)

    class KeywordGeneratorDDIM(DDIMScheduler):  # a required keyword the loop passes (generator)
        def step(self, model_output, timestep, sample, *, generator, eta=0.0, return_dict=True):
            return super().step(model_output, timestep, sample, eta=eta, generator=generator, return_dict=return_dict)

    class PositionalOnlyDDIM(DDIMScheduler):  # takes no return_dict keyword: failed at the first step
        def step(self, *args):
            return super().step(*args)

    for cls in (UniPCMultistepScheduler, DDIMScheduler, EulerAncestralDiscreteScheduler, LoggingDDIM):
        pipe.scheduler = cls.from_config(original.config)
    pipe.scheduler = KeywordGeneratorDDIM.from_config(original.config)
    with pytest.raises(ValueError, match=r"PositionalOnlyDDIM.step cannot be called as step\(model_output, timestep"):
        pipe.scheduler = PositionalOnlyDDIM.from_config(original.config)
    pipe.scheduler = original


def test_a_schedule_the_sampler_cannot_make_is_refused_before_any_model_runs(guarded_pipe, start_image):
    original = guarded_pipe.scheduler
    guarded_pipe.scheduler = PNDMScheduler.from_config(original.config)
    try:
        with pytest.raises(
            ValueError, match=r"PNDMScheduler cannot make a schedule of num_inference_steps=3 .*; use more"
        ):
            _call(guarded_pipe, start_image, num_inference_steps=3)
    finally:
        guarded_pipe.scheduler = original
    # Too many steps, with every sampler: Euler would first build a schedule of 10^9 steps (gigabytes).
    train_steps = original.config.num_train_timesteps
    for cls in (type(original), EulerDiscreteScheduler):
        scheduler = cls.from_config(original.config)

        def must_not_schedule(*args, **kwargs):
            raise AssertionError("a schedule was built before the step count was checked")

        scheduler.set_timesteps = must_not_schedule
        guarded_pipe.scheduler = scheduler
        try:
            for steps in (train_steps + 1, 10**9):
                with pytest.raises(
                    ValueError,
                    match=rf"`num_inference_steps` must be at most the scheduler's `num_train_timesteps` "
                    rf"\({train_steps}\), got {steps}\.",
                ):
                    _call(guarded_pipe, start_image, num_inference_steps=steps)
        finally:
            guarded_pipe.scheduler = original


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompt": "a cat"}, r"\['prompt'\]: `prompt`: Ruyi takes no text prompt; it is steered by its image\(s\)"),
        ({"negative_prompt": "blurry"}, r"\['negative_prompt'\]: `negative_prompt`: Ruyi takes no text prompt"),
        (
            {"num_inference_step": 2},
            r"\['num_inference_step'\]: `num_inference_step` \(did you mean `num_inference_steps`\?\)\.$",
        ),
        ({"frames": 8}, r"\['frames'\]: `frames` \(did you mean `num_frames`\?\)\.$"),
        ({"fps": 8}, r"\['fps'\]: `fps`\.$"),
        (
            {"strength": 0.5, "prompt_2": "x"},
            r"\['prompt_2', 'strength'\]: `prompt_2`: Ruyi takes no .*; `strength`\.$",
        ),
    ],
)
def test_arguments_the_pipeline_does_not_take_are_named_before_any_model_runs(
    guarded_pipe, start_image, kwargs, match
):
    # A diffusers user's habits (a text prompt, another pipeline's argument, a typo): one TypeError that names them.
    with pytest.raises(
        TypeError, match=r"RuyiImageToVideoPipeline.__call__\(\) got unexpected keyword argument\(s\) " + match
    ):
        _call(guarded_pipe, start_image, **kwargs)


def test_sizes_beyond_the_limits_are_refused_before_any_model_runs(guarded_pipe, start_image):
    # The allocator would refuse them only after the image encoder and the VAE ran.
    with pytest.raises(
        ValueError, match=r"`height` must be at most 4096 \(Ruyi makes 360p to 720p videos\), got 4112"
    ):
        _call(guarded_pipe, start_image, height=4112, width=48)
    with pytest.raises(ValueError, match="`base_resolution` must be an integer from 64 to 2048, got 2049"):
        _call(guarded_pipe, start_image, height=None, width=None, base_resolution=2049)


def test_numpy_numbers_are_taken_as_python_numbers(pipe, start_image):
    expected = _call(
        pipe, start_image, num_inference_steps=1, guidance_scale=3.0, clip_apply_ratio=0.4, motion=2
    ).frames
    got = _call(
        pipe,
        start_image,
        num_frames=np.int64(8),
        height=np.int32(32),
        width=np.int64(48),
        num_inference_steps=np.int64(1),
        guidance_scale=np.float32(3.0),
        clip_apply_ratio=np.float32(0.4),
        motion=np.int64(2),
        base_resolution=np.int64(512),
    ).frames
    assert torch.equal(got, expected)


def test_base_resolution_is_checked_when_height_and_width_are_given(guarded_pipe, start_image):
    with pytest.raises(TypeError, match="`base_resolution` must be an integer from 64 to 2048, got str"):
        _call(guarded_pipe, start_image, base_resolution="junk")


def test_progress_bar_counts_every_timestep(pipe, start_image, monkeypatch):
    class Bar:
        def __init__(self, total):
            self.total, self.n = total, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            self.n += n

    bars = []
    monkeypatch.setattr(pipe, "progress_bar", lambda iterable=None, total=None: bars.append(Bar(total)) or bars[-1])
    original = pipe.scheduler
    try:
        pipe.scheduler = PNDMScheduler.from_config(original.config)
        _call(pipe, start_image, num_inference_steps=5, output_type="latent")
        timesteps = len(pipe.scheduler.timesteps)
    finally:
        pipe.scheduler = original
    assert timesteps > 5  # PNDM adds a step
    # Other bars (VAE encode) may come first; exactly one bar is the loop's, and it counts every timestep.
    loop_bars = [bar for bar in bars if bar.total == timesteps]
    assert len(loop_bars) == 1 and loop_bars[0].n == timesteps == pipe.num_timesteps


def test_size_from_base_resolution(pipe):
    wide = PIL.Image.new("RGB", (160, 90), (10, 120, 200))
    assert get_bucket_size(90, 160, 512) == (384, 672)
    assert get_bucket_size(90, 160, 256) == (192, 336)
    out = pipe(image=wide, num_frames=1, base_resolution=128, num_inference_steps=1, output_type="latent")
    assert out.frames.shape[-2:] == (96 // 8, 160 // 8)


def test_custom_embeddings(pipe, start_image):
    positive, negative = pipe.control_embeddings.get_controls(motion=2, camera_direction="left")
    names = ["prompt_embeds", "prompt_attention_mask", "prompt_embeds_2", "prompt_attention_mask_2"]
    kwargs = dict(zip(names, positive))
    kwargs.update({f"negative_{k}": v for k, v in zip(names, negative)})
    by_controls = _call(pipe, start_image, motion=2, camera_direction="left").frames
    by_embeds = _call(pipe, start_image, **kwargs).frames
    assert torch.equal(by_controls, by_embeds)
    other = _call(pipe, start_image, motion=4, camera_direction="up").frames
    assert not torch.equal(by_controls, other)


@pytest.mark.parametrize("height, width", [(0, 100), (-100, 100), (float("nan"), 100), (100, 0), ("100", 100)])
def test_bucket_size_needs_a_real_image_size(height, width):
    with pytest.raises(ValueError, match="`image_(height|width)` must be a positive number"):
        get_bucket_size(height, width, 512)


def _custom_embeds(pipe):
    positive, negative = pipe.control_embeddings.get_controls()
    names = ["prompt_embeds", "prompt_attention_mask", "prompt_embeds_2", "prompt_attention_mask_2"]
    kwargs = dict(zip(names, positive))
    kwargs.update({f"negative_{k}": v for k, v in zip(names, negative)})
    return kwargs


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(motion=3), ValueError, "Custom embeddings replace the controls, so motion=3 would be ignored"),
        (dict(camera_direction="left"), ValueError, "so camera_direction='left' would be ignored"),
        (dict(motion=9), ValueError, "`motion` must be one of"),
        # Each wrong in one dimension: the features, the tokens, the mask's length, the batch (1 or the videos').
        (lambda e: dict(prompt_embeds=e["prompt_embeds"][..., :-1]), ValueError, "`prompt_embeds` must be a tensor"),
        (lambda e: dict(prompt_embeds_2=e["prompt_embeds_2"][:, :-1]), ValueError, "`prompt_embeds_2` must be a"),
        (
            lambda e: dict(negative_prompt_attention_mask=e["negative_prompt_attention_mask"][:, 1:]),
            ValueError,
            "`negative_prompt_attention_mask` must be a tensor of shape",
        ),
        (lambda e: dict(prompt_embeds=e["prompt_embeds"].repeat(3, 1, 1)), ValueError, "shape \\(1 or 1, "),
        (lambda e: dict(prompt_embeds=e["prompt_embeds"].long()), TypeError, "`prompt_embeds` must be floating"),
        # A NaN or an infinity anywhere in an embedding gives a NaN or black video.
        (
            lambda e: dict(
                negative_prompt_embeds_2=e["negative_prompt_embeds_2"].index_fill(1, torch.tensor([3]), torch.nan)
            ),
            ValueError,
            "`negative_prompt_embeds_2` holds NaN or infinite values",
        ),
        (
            lambda e: dict(prompt_embeds=e["prompt_embeds"].index_fill(2, torch.tensor([0]), -torch.inf)),
            ValueError,
            "`prompt_embeds` holds NaN or infinite values",
        ),
    ],
)
def test_bad_custom_embeddings_fail_early(guarded_pipe, start_image, change, error, match):
    kwargs = _custom_embeds(guarded_pipe)
    kwargs.update(change(kwargs) if callable(change) else change)
    with pytest.raises(error, match=match):
        _call(guarded_pipe, start_image, **kwargs)


def test_custom_embeddings_of_the_batch_size_are_taken(pipe, start_image):
    # Batch 1 is repeated to the videos'; the videos' own batch is taken as it is.
    kwargs = _custom_embeds(pipe)
    batched = {k: v.repeat(2, *([1] * (v.ndim - 1))) for k, v in kwargs.items()}
    one = _call(pipe, [start_image, start_image], num_inference_steps=1, **kwargs).frames
    two = _call(pipe, [start_image, start_image], num_inference_steps=1, **batched).frames
    assert torch.equal(one, two)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(image="start.png"), TypeError, "`image` must be a PIL image, a numpy array, a torch tensor"),
        (dict(image=np.zeros((32, 32, 3), dtype=np.int32)), TypeError, "`image` as an array must be uint8"),
        (dict(last_image=[1, 2]), TypeError, "`last_image\\[0\\]` must be a PIL image"),
        (dict(motion=5), ValueError, "`motion` must be one of 1, 2, 3, 4 or 'auto'"),
        (dict(motion="fast"), ValueError, "`motion` must be one of"),
        (dict(camera_direction="diagonal"), ValueError, "`camera_direction` must be one of"),
        (dict(aspect_ratio="4x3"), ValueError, "`aspect_ratio` must be a tag like"),
        (dict(height=8), ValueError, "`height` must be at least 16"),  # 40 is floored to 32, as in the original
        (dict(width=-48), ValueError, "`width` must be a positive multiple of 16"),
        (dict(width=4112), ValueError, "`width` must be at most 4096"),
        (dict(height=None), ValueError, "Pass both `height` and `width`"),
        (dict(num_frames=10), ValueError, "`num_frames`=10 is not supported by the VAE.*valid frame counts are 1"),
        (dict(num_frames=0), ValueError, "`num_frames`=0"),
        (dict(num_frames=8.0), TypeError, "`num_frames` must be an integer"),
        (dict(num_inference_steps=0), ValueError, "`num_inference_steps` must be a positive integer"),
        (dict(output_type="gif"), ValueError, "`output_type` must be one of"),
        (dict(clip_apply_ratio=1.5), ValueError, "`clip_apply_ratio` must be a finite number in \\[0, 1\\]"),
        (dict(clip_apply_ratio=float("nan")), ValueError, "`clip_apply_ratio` must be a finite number in"),
        (dict(clip_apply_ratio="0.4"), TypeError, "`clip_apply_ratio` must be a number"),
        (dict(num_inference_steps=2.0), TypeError, "`num_inference_steps` must be a positive integer, got float"),
        (dict(height="512", width=512), TypeError, "`height` must be a positive multiple of 16, got str"),
        (dict(num_videos_per_prompt=0), ValueError, "`num_videos_per_prompt` must be a positive integer"),
        (
            dict(generator=[torch.Generator()] * 3),
            ValueError,
            "list of 3 generators, but the effective batch size is 1",
        ),
        (dict(generator=42), TypeError, "`generator` must be a torch.Generator"),
        (dict(latents=torch.zeros(1, 16, 3, 4, 6)), ValueError, "`latents` must be a tensor of shape"),
        (dict(prompt_embeds=torch.zeros(1, 8, 32)), ValueError, "Custom embeddings must be passed all together"),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), ValueError, "must be a subset of"),
        (dict(eta=float("nan")), ValueError, "`eta` must be a finite number in \\[0, 1\\]"),
        (dict(eta=-1), ValueError, "`eta` must be a finite number in \\[0, 1\\]"),
        (dict(eta="0.5"), TypeError, "`eta` must be a number"),
        (dict(guidance_rescale=-0.5), ValueError, "`guidance_rescale` must be a finite number in \\[0, 1\\]"),
        (dict(guidance_rescale=float("nan")), ValueError, "`guidance_rescale` must be a finite number"),
        (dict(guidance_rescale=None), TypeError, "`guidance_rescale` must be a number"),
        (dict(original_size=(1024,)), ValueError, "`original_size` must be a pair of numbers"),
        (dict(original_size=None), ValueError, "`original_size` must be a pair of numbers"),
        (dict(original_size=(float("nan"), 1)), ValueError, "`original_size` must be a finite number >= 1"),
        (dict(crops_coords_top_left=(0, 0, 0)), ValueError, "`crops_coords_top_left` must be a pair"),
        (dict(crops_coords_top_left="ab"), ValueError, "`crops_coords_top_left` must be a pair"),
        (dict(clip_apply_ratio=True), TypeError, "`clip_apply_ratio` must be a number"),
        (dict(generator=[1]), TypeError, "`generator` as a list must hold torch.Generator objects only"),
        (dict(generator=[None]), TypeError, "`generator` as a list must hold torch.Generator objects only"),
        (dict(latents=torch.zeros(1, 16, 2, 4, 6, dtype=torch.int64)), TypeError, "`latents` must be a floating"),
        (dict(latents=torch.zeros(1, 16, 2, 4, 6, dtype=torch.complex64)), TypeError, "`latents` must be a floating"),
        (dict(latents=torch.zeros(1, 16, 2, 4, 6, device="meta")), ValueError, "`latents` is a meta tensor"),
        (dict(callback_on_step_end=5), TypeError, "`callback_on_step_end` must be callable"),
        (
            dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=None),
            ValueError,
            "`callback_on_step_end_tensor_inputs` must list",
        ),
        (dict(attention_kwargs=[1, 2]), TypeError, "`attention_kwargs` must be a dict or None"),
        (dict(attention_kwargs={"scal": 0.5}), ValueError, "`attention_kwargs` takes only 'scale'.*got 'scal'"),
        (dict(attention_kwargs={"scale": 1.0, "x": 1}), ValueError, "takes only 'scale'.*got 'x'"),
        (
            dict(attention_kwargs={"scale": float("inf")}),
            ValueError,
            "`attention_kwargs\\['scale'\\]` must be a finite",
        ),
        (dict(attention_kwargs={"scale": "1"}), TypeError, "`attention_kwargs\\['scale'\\]` must be a number"),
        (
            dict(latents=torch.zeros(1, 16, 2, 4, 6).index_fill(2, torch.tensor([1]), torch.nan)),
            ValueError,
            "`latents` holds NaN or inf",
        ),
        (dict(latents=torch.full((1, 16, 2, 4, 6), torch.inf)), ValueError, "`latents` holds NaN or infinite values"),
        # 'int' object is not iterable; a string taken as truthy.
        (
            dict(callback_on_step_end=lambda *a: a[-1], callback_on_step_end_tensor_inputs=5),
            TypeError,
            r"`callback_on_step_end_tensor_inputs` must be a collection \(a list, tuple or set\) of names from",
        ),
        (dict(return_dict="no"), TypeError, "`return_dict` must be True or False, got str 'no'"),
        (
            dict(callback_on_step_end=lambda *a: a[-1], callback_on_step_end_tensor_inputs="latents"),
            TypeError,
            "must be a collection",
        ),
    ],
)
def test_bad_inputs_fail_early(guarded_pipe, start_image, kwargs, error, match):
    args = dict(image=start_image)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        _call(guarded_pipe, **args)


def test_frame_counts_decode_back_to_themselves_whatever_the_cache_vaes_chunk(guarded_pipe):
    # The pipeline takes 1 or a multiple of 8 frames; the cache VAE, as the original, decodes a shorter last chunk of
    # latent frames, so those counts come back whole with any decoder chunk size, not only the checkpoint's 2.
    vae = guarded_pipe.vae
    assert vae.config.compression_mode == "cache"
    try:
        for chunk in (1, 2, 3, 4, 5):
            vae.register_to_config(num_latent_frames_batch_size=chunk)
            for num_frames in (1, 8, 16, 24, 120):
                assert vae.num_sample_frames(vae.num_latent_frames(num_frames)) == num_frames
    finally:
        vae.register_to_config(num_latent_frames_batch_size=2)


def test_more_start_or_end_frames_than_frames_are_refused(guarded_pipe, start_image):
    # (Start and end frames that only together exceed the count run, as in the original: test_pipeline_multiframe.)
    with pytest.raises(
        ValueError, match=r"too short for video 0's 9 start frame\(s\) \(`image`\): they would not all fit"
    ):
        _call(guarded_pipe, [[start_image] * 9], num_frames=8)
    with pytest.raises(ValueError, match=r"too short for video 0's 9 end frame\(s\) \(`last_image`\): they would not"):
        _call(guarded_pipe, [[start_image]], last_image=[[start_image] * 9], num_frames=8)


def test_faster_cache_needs_guidance(guarded_pipe, start_image):
    from diffusers import FasterCacheConfig

    guarded_pipe.transformer.enable_cache(FasterCacheConfig())
    try:
        with pytest.raises(ValueError, match="FasterCache .* needs classifier-free guidance, `guidance_scale` > 1"):
            _call(guarded_pipe, start_image, guidance_scale=1.0)
    finally:
        guarded_pipe.transformer.disable_cache()


def test_components_are_checked(pipe, start_image):
    components = dict(pipe.components)
    with pytest.raises(
        TypeError, match="`transformer` must be a RuyiTransformer3DModel, got AutoencoderKLRuyiCausal3D"
    ):
        RuyiImageToVideoPipeline(**{**components, "transformer": pipe.vae})
    assembled = RuyiImageToVideoPipeline(**{**components, "vae": None})
    with pytest.raises(ValueError, match="The pipeline has no \\['vae'\\]"):
        _call(assembled, start_image)


@pytest.mark.parametrize(
    "change, match",
    [
        # CLIP failed on its input size after it had run; PIL on a negative size.
        (dict(crop_size={"height": 64, "width": 64}), r"crops to 64x64, but the image encoder takes 32x32"),
        (dict(size={"shortest_edge": -5}), r"`size` must hold positive integers, got \{'shortest_edge': -5\}"),
        (dict(crop_size={"height": 0, "width": 0}), r"`crop_size` must hold positive integers"),
    ],
)
def test_an_image_processor_that_does_not_fit_the_encoder_is_refused(pipe, change, match):
    # Built as transformers builds them (its sizes are `SizeDict`s in transformers 5, not dicts).
    processor = type(pipe.image_processor)(**{"size": {"shortest_edge": 32}, **change})
    with pytest.raises(ValueError, match=match):
        RuyiImageToVideoPipeline(**{**pipe.components, "image_processor": processor})
    fitting = type(pipe.image_processor)(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    RuyiImageToVideoPipeline(**{**pipe.components, "image_processor": fitting})


def test_dtype_dict_names_components(tiny_checkpoint):
    with pytest.raises(ValueError, match="`dtype` names no component of the pipeline: 'transfomer'"):
        RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint, dtype={"transfomer": torch.float16})


def test_last_image_count_must_match(guarded_pipe, start_image):
    with pytest.raises(ValueError, match="`last_image` must have as many images as `image`"):
        _call(guarded_pipe, [start_image, start_image], last_image=start_image)


def test_original_layout_missing_embeddings_key(tiny_checkpoint, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    flat = load_file(str(folder / "embeddings.safetensors"))
    del flat["n.default.emb1"]
    save_file(flat, str(folder / "embeddings.safetensors"))
    with pytest.raises(ValueError, match="n.default"):
        RuyiImageToVideoPipeline.from_pretrained(folder)


def test_original_layout_transformers_spelling_and_bad_folder(tiny_checkpoint, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "transformer").rename(folder / "transformers")
    pipe = RuyiImageToVideoPipeline.from_pretrained(folder)
    assert pipe.transformer.config.num_layers == 4
    shutil.rmtree(folder / "vae")
    with pytest.raises(ValueError, match="neither a diffusers pipeline folder"):
        RuyiImageToVideoPipeline.from_pretrained(folder)


def test_unknown_kwarg_for_original_layout(tiny_checkpoint):
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['safety_checker'\]"):
        RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint, safety_checker=None)
    with pytest.raises(ValueError, match="loads every component on one device"):
        RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint, device_map="auto")


def test_output_dataclass():
    out = RuyiPipelineOutput(frames=torch.zeros(1))
    assert out.frames.shape == (1,)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs(tiny_checkpoint, start_image, dtype):
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint, dtype={"default": dtype, "vae": torch.float32})
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.dtype == dtype and pipe.image_encoder.dtype == dtype
    assert pipe.vae.dtype == torch.float32
    out = _call(pipe, start_image).frames
    assert out.shape == (1, 8, 3, 32, 48) and torch.isfinite(out).all()


def test_hub_id_is_downloaded_then_converted(tiny_checkpoint, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tiny_checkpoint)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    pipe = RuyiImageToVideoPipeline.from_pretrained(
        "IamCreateAI/Ruyi-Mini-7B", revision="main", force_download=True, local_files_only=False, proxies=None
    )
    # Its model_index.json (here none: the original layout), then the files of that layout, with the hub options
    # given (the defaults, `False` and `None`, left to huggingface_hub).
    assert [kwargs.pop("allow_patterns")[0] for _, kwargs in calls] == ["model_index.json"] * 2
    assert calls == [("IamCreateAI/Ruyi-Mini-7B", {"revision": "main", "force_download": True})] * 2
    assert pipe.transformer.config.num_layers == 4


def test_a_diffusers_format_hub_id_fetches_its_components(pipe, tmp_path, monkeypatch):
    # Through `DiffusionPipeline.download` it failed: diffusers refuses components of the `diffusers_ruyi` library.
    # Now the folders model_index.json lists, in safetensors, less the components passed in.
    pipe.save_pretrained(tmp_path / "repo")
    (tmp_path / "repo" / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"a pickle never read")
    (tmp_path / "repo" / "assets").mkdir()
    (tmp_path / "repo" / "assets" / "demo.mp4").write_bytes(b"media")
    calls = []
    monkeypatch.setattr(
        "huggingface_hub.snapshot_download", fake_snapshot_download(tmp_path / "repo", tmp_path, calls)
    )
    loaded = RuyiImageToVideoPipeline.from_pretrained("someone/ruyi-diffusers", revision="v1")
    assert [c[1][0] for c in calls] == ["model_index.json"] * 2 and calls[0][3] == calls[1][3] == {"revision": "v1"}
    saved = [f for f in files_under(tmp_path / "repo") if not f.startswith("assets/") and not f.endswith(".bin")]
    assert files_under(tmp_path / "snapshot-2") == saved
    expected = pipe.transformer.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.transformer.state_dict().items())
    # A component passed in is not fetched.
    again = RuyiImageToVideoPipeline.from_pretrained("someone/ruyi-diffusers", vae=pipe.vae)
    assert again.vae is pipe.vae and not any(f.startswith("vae/") for f in files_under(tmp_path / "snapshot-4"))
    # Another pipeline's repository is refused before its weights are fetched.
    index = json.loads((tmp_path / "repo" / "model_index.json").read_text())
    (tmp_path / "repo" / "model_index.json").write_text(json.dumps({**index, "_class_name": "WanPipeline"}))
    calls.clear()
    with pytest.raises(ValueError, match="holds a 'WanPipeline' pipeline .*, not a Ruyi checkpoint"):
        RuyiImageToVideoPipeline.from_pretrained("someone/wan")
    assert len(calls) == 1


def test_a_diffusers_format_hub_id_fetches_one_variant(pipe, tmp_path, monkeypatch):
    # Online, the repository is listed and only the weights of the variant asked for are fetched, as
    # `DiffusionPipeline.download` picks them (a component without that variant: its plain weights).
    repo = tmp_path / "repo"
    pipe.save_pretrained(repo)
    for name in ("transformer", "image_encoder"):  # copies: `pipe` is shared
        copy.deepcopy(getattr(pipe, name)).half().save_pretrained(repo / name, variant="fp16")
    calls, listed = [], []

    def model_info(repo_id, revision=None, token=None):
        listed.append((repo_id, revision))
        return types.SimpleNamespace(siblings=[types.SimpleNamespace(rfilename=f) for f in files_under(repo)])

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download(repo, tmp_path, calls))
    monkeypatch.setattr("huggingface_hub.model_info", model_info)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    plain = RuyiImageToVideoPipeline.from_pretrained("someone/ruyi-diffusers", revision="v1")
    assert listed == [("someone/ruyi-diffusers", "v1")]
    assert files_under(tmp_path / "snapshot-2") == [f for f in files_under(repo) if ".fp16." not in f]
    assert torch.equal(plain.transformer.proj_out.weight, pipe.transformer.proj_out.weight)

    half = RuyiImageToVideoPipeline.from_pretrained("someone/ruyi-diffusers", variant="fp16", dtype=torch.float16)
    weights = [f for f in files_under(tmp_path / "snapshot-4") if f.endswith(".safetensors")]
    assert weights == [
        "control_embeddings/diffusion_pytorch_model.safetensors",  # no fp16 file: the plain one
        "image_encoder/model.fp16.safetensors",
        "transformer/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert "scheduler/scheduler_config.json" in files_under(tmp_path / "snapshot-4")
    assert torch.equal(half.transformer.proj_out.weight, pipe.transformer.proj_out.weight.half())

    # A variant no component has is refused before any weights are fetched (diffusers' own check and message).
    calls.clear()
    with pytest.raises(ValueError, match="variant=bf16"):
        RuyiImageToVideoPipeline.from_pretrained("someone/ruyi-diffusers", variant="bf16")
    assert [c[1] for c in calls] == [["model_index.json"]]

    # A repository that cannot be listed is fetched folder by folder, as offline, with a warning that says so.
    def unlisted(repo_id, revision=None, token=None):
        raise ConnectionError("no route to the Hub")

    monkeypatch.setattr("huggingface_hub.model_info", unlisted)
    calls.clear()
    with logged("diffusers_ruyi.loaders.original_checkpoint") as records:
        RuyiImageToVideoPipeline.from_pretrained("someone/ruyi-diffusers")
    messages = [r.getMessage() for r in records]
    assert any("Could not list the files of 'someone/ruyi-diffusers'" in m for m in messages)
    assert "transformer/*" in calls[-1][1]


def test_hub_id_offline_without_cache_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    # conftest sets HF_HUB_OFFLINE=1: nothing is fetched, and one clear error says why and what to do.
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache and downloading is off"):
        RuyiImageToVideoPipeline.from_pretrained("IamCreateAI/Ruyi-Mini-7B", cache_dir=str(tmp_path))


def test_hub_id_offline_with_a_partial_cache_names_what_is_missing(tiny_realfmt_checkpoint, tmp_path):
    # A load given `vae=` (or `image_encoder=`) cached that model's config only; offline, a later load without it
    # names the gap and the command that fills it, rather than a model folder without weights.
    repo = tmp_path / "models--IamCreateAI--Ruyi-Mini-7B"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    snapshot = repo / "snapshots" / "abc"
    shutil.copytree(tiny_realfmt_checkpoint, snapshot)
    (snapshot / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (snapshot / "image_encoder" / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="only partly in the local Hugging Face cache") as error:
        RuyiImageToVideoPipeline.from_pretrained("IamCreateAI/Ruyi-Mini-7B", cache_dir=str(tmp_path))
    assert "no weights for vae, image_encoder" in str(error.value)
    command = (
        f"hf download IamCreateAI/Ruyi-Mini-7B --include 'vae/*' --include 'image_encoder/*' --cache-dir {tmp_path}"
    )
    assert f"(`{command}`)" in str(error.value)
    # Given again, they are not needed: the rest loads from the cache.
    local = RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint)
    pipe = RuyiImageToVideoPipeline.from_pretrained(
        "IamCreateAI/Ruyi-Mini-7B", cache_dir=str(tmp_path), vae=local.vae, image_encoder=local.image_encoder
    )
    assert pipe.vae is local.vae and pipe.transformer.config.num_layers == local.transformer.config.num_layers


@pytest.mark.parametrize("path", ["./no/such/folder", "no-such-folder", "/tmp/does/not/exist", "a/b/c"])
def test_mistyped_local_path_is_not_sent_to_the_hub(path):
    with pytest.raises(FileNotFoundError, match="is not an existing folder"):
        RuyiImageToVideoPipeline.from_pretrained(path)


def test_offload_devices_are_checked_first(pipe):
    # Sequential offload to the CPU was taken and failed in accelerate at the next call; an absent device failed in
    # torch with an AssertionError.
    with pytest.raises(ValueError, match=r"`enable_sequential_cpu_offload` keeps the weights on the CPU .*'cpu'"):
        pipe.enable_sequential_cpu_offload(device="cpu")
    with pytest.raises(ValueError, match="`device` of `enable_model_cpu_offload` is not a device: 'gpu'"):
        pipe.enable_model_cpu_offload(device="gpu")
    with pytest.raises(TypeError, match="`device` of `enable_model_cpu_offload` must be a str, torch.device or int"):
        pipe.enable_model_cpu_offload(device=[0])
    with pytest.raises(TypeError, match="`gpu_id` must be an integer, got str"):
        pipe.enable_model_cpu_offload(gpu_id="0", device="cuda")
    with pytest.raises(ValueError, match="Cannot pass both"):  # diffusers' own check, not a probe of cuda:0
        pipe.enable_model_cpu_offload(gpu_id=0, device="cuda:1")
    if not torch.cuda.is_available():
        for method in (pipe.enable_model_cpu_offload, pipe.enable_sequential_cpu_offload):
            with pytest.raises(ValueError, match=r"^`device` 'cuda:1' is not available here: "):
                method(gpu_id=1, device="cuda")
            with pytest.raises(ValueError, match=r"^`device` 'cuda:3' is not available here: "):
                method(device="cuda:3")
    assert not getattr(pipe, "_all_hooks", [])  # nothing was set up


def test_model_cpu_offload_parks_the_vae_during_the_denoising_loop(tiny_checkpoint, start_image):
    # The VAE encodes before the transformer runs; its hook alone would keep it on the accelerator until the decode.
    # (Offloading "to" the CPU from the CPU: the order of the moves is what is checked.)
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint)
    pipe.set_progress_bar_config(disable=True)
    expected = _call(pipe, start_image).frames
    pipe.enable_model_cpu_offload(device="cpu")
    events = []
    (vae_hook,) = [hook for hook in pipe._all_hooks if hook.model is pipe.vae]
    offload = vae_hook.offload
    vae_hook.offload = lambda: events.append("vae offloaded") or offload()
    pipe.vae.encoder.register_forward_pre_hook(lambda *_: events.append("vae encoder"))
    pipe.vae.decoder.register_forward_pre_hook(lambda *_: events.append("vae decoder"))
    pipe.transformer.register_forward_pre_hook(lambda *_: events.append("transformer"))
    assert torch.equal(_call(pipe, start_image).frames, expected)
    first_transformer = events.index("transformer")
    assert "vae offloaded" in events[events.index("vae encoder") : first_transformer]
    assert "vae decoder" in events[first_transformer:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU offload needs an accelerator")
@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_cpu_offload_matches(tiny_checkpoint, start_image, mode):
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint)
    pipe.set_progress_bar_config(disable=True)
    expected = _call(pipe.to("cuda"), start_image).frames
    pipe.to("cpu")
    getattr(pipe, f"enable_{mode}_cpu_offload")()
    assert (_call(pipe, start_image).frames - expected).abs().max() < 1e-4


_bad_values = {
    "num_frames": st.one_of(
        st.integers(-50, 0), st.integers(2, 7), st.integers(9, 15), st.floats(), st.text(max_size=3)
    ),
    "height": st.one_of(st.integers(-64, 0), st.integers(1, 15), st.integers(4097, 9000), st.floats(), st.text()),
    "width": st.one_of(st.integers(-64, 0), st.integers(1, 15), st.integers(4097, 9000), st.floats(), st.text()),
    "motion": st.one_of(st.integers(5, 100), st.integers(-100, 0), st.text().filter(lambda v: v not in MOTION_VALUES)),
    "camera_direction": st.text().filter(lambda v: v not in CAMERA_DIRECTIONS),
    "num_inference_steps": st.one_of(st.integers(-10, 0), st.floats(), st.text(max_size=3)),
    "output_type": st.text().filter(lambda v: v not in ("pil", "np", "pt", "latent")),
    "clip_apply_ratio": st.one_of(st.floats(min_value=1.01), st.floats(max_value=-0.01), st.text(max_size=2)),
    "num_videos_per_prompt": st.one_of(st.integers(-5, 0), st.floats(), st.text(max_size=2)),
    "guidance_scale": st.one_of(st.text(max_size=2), st.none(), st.lists(st.integers(), max_size=2)),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_invalid_arguments_fail_early(guarded_pipe, start_image, data):
    name = data.draw(st.sampled_from(sorted(_bad_values)))
    value = data.draw(_bad_values[name])
    with pytest.raises((ValueError, TypeError)) as e:
        _call(guarded_pipe, start_image, **{name: value})
    assert f"`{name}`" in str(e.value)


def test_numpy_bools_sets_and_plain_sizes_are_taken(pipe, start_image):
    # A NumPy bool for return_dict, a set of tensor names (diffusers takes any collection), a processor whose size is
    # a plain number (the processor reads it itself).
    out = _call(
        pipe,
        start_image,
        num_inference_steps=1,
        return_dict=np.False_,
        callback_on_step_end=lambda p, i, t, k: k,
        callback_on_step_end_tensor_inputs={"latents"},
        output_type="latent",
    )
    assert isinstance(out, tuple)
    processor = type(pipe.image_processor)(crop_size={"height": 32, "width": 32})
    processor.size = 32
    RuyiImageToVideoPipeline(**{**pipe.components, "image_processor": processor})


def test_latent_output_decodes_to_the_video_by_the_documented_recipe(pipe, start_image):
    # docs/pipeline.md: decode_latents (with the slice VAE's smooth_output), then the video processor. Outside
    # no_grad decode_latents recorded the VAE's graph and postprocess_video failed on it.
    latents = _call(pipe, start_image, num_inference_steps=2, output_type="latent").frames
    for bad, shown in ((latents.numpy(), "ndarray"), (latents[0], str(tuple(latents[0].shape)))):
        with pytest.raises(TypeError, match=rf"`latents` must be a 5D tensor .*got {re.escape(shown)}"):
            pipe.decode_latents(bad)
    video = pipe.video_processor.postprocess_video(pipe.decode_latents(latents), output_type="np")
    expected = _call(pipe, start_image, num_inference_steps=2, output_type="np").frames
    assert np.array_equal(video, expected)


def test_saved_model_index_is_written_like_diffusers_configs(pipe, tmp_path):
    # model_index.json is written as diffusers writes every config (two-space indent, sorted keys, a final newline):
    # the same text as the components' config files, so that saved folders diff cleanly against diffusers' own.
    pipe.save_pretrained(tmp_path)
    for name in ("model_index.json", "scheduler/scheduler_config.json", "transformer/config.json"):
        text = (tmp_path / name).read_text()
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n", name
    assert pipe.to_json_string() == (tmp_path / "model_index.json").read_text()
