"""`ruyi-i2v` flags checked by their effect on the video, not only by parsing: each run of the CLI must give the
frames of the pipeline called directly with the matching arguments (the mp4 writer is replaced by a capture, so the
comparison is on the float frames, not on lossy video)."""

import pathlib

import diffusers.utils
import numpy as np
import PIL.Image
import pytest
import torch
from _helpers import ORIGINAL_LORA, load_pipe

from diffusers_ruyi.cli import main
from diffusers_ruyi.hooks import RuyiEnhanceAVideoConfig, apply_ruyi_enhance_a_video


ROOT = pathlib.Path(__file__).resolve().parents[2]
START = str(ROOT / "examples" / "assets" / "start.png")
END = str(ROOT / "examples" / "assets" / "end.png")
LORA = ORIGINAL_LORA
TOL = 1e-4


def _capture_videos(monkeypatch):
    """Replaces the mp4 writer: the frames of each video the CLI writes are appended to the returned list."""
    captured = []
    monkeypatch.setattr(diffusers.utils, "export_to_video", lambda frames, path, fps, quality: captured.append(frames))
    return captured


def _base_argv(tmp_path, tiny_checkpoint):
    return [
        "--model",
        str(tiny_checkpoint),
        "--image",
        START,
        "--output",
        str(tmp_path / "v.mp4"),
        "--quiet",
        "--overwrite",
    ]


def _cli(monkeypatch, tmp_path, tiny_checkpoint, *extra):
    captured = _capture_videos(monkeypatch)
    argv = _base_argv(tmp_path, tiny_checkpoint)
    argv += ["--num-frames", "8", "--height", "32", "--width", "48", "--steps", "2", *extra]
    assert main(argv) == 0
    return torch.from_numpy(np.stack(captured[0]))


def _direct(tiny_checkpoint, configure=None, **kwargs):
    pipe = load_pipe(tiny_checkpoint, dtype=torch.float32)
    if configure is not None:
        configure(pipe)
    args = dict(num_frames=8, height=32, width=48, num_inference_steps=2, guidance_scale=7.0, seed=42)
    args.update(kwargs)
    seed = args.pop("seed")
    frames = pipe(
        image=PIL.Image.open(START), generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **args
    ).frames[0]
    return torch.from_numpy(frames)


def _lora(weight):
    def configure(pipe):
        pipe.load_lora_weights(str(LORA), adapter_name="lora_0")
        pipe.set_adapters(["lora_0"], [weight])

    return configure


def _enhance(pipe):
    apply_ruyi_enhance_a_video(pipe.transformer, RuyiEnhanceAVideoConfig(weight=3.0))


def _dpm(pipe):
    # Not Euler: on this checkpoint's timesteps it takes DDIM's deterministic steps, so the videos differ by rounding.
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)


CASES = {
    "seed": (["--seed", "5"], dict(seed=5), None),
    "guidance": (["--guidance-scale", "3"], dict(guidance_scale=3.0), None),
    # The API's range: below 1 turns guidance off, as 1 does.
    "guidance below 1": (["--guidance-scale", "0.5"], dict(guidance_scale=0.5), None),
    "motion_camera": (["--motion", "4", "--camera", "right"], dict(motion="4", camera_direction="right"), None),
    "steps": (["--steps", "3"], dict(num_inference_steps=3), None),
    "last_image": (["--last-image", END], dict(last_image=PIL.Image.open(END)), None),
    "lora_weight": (["--lora", str(LORA), "--lora-weight", "0.3"], {}, _lora(0.3)),
    "enhance": (["--enhance-a-video", "3"], {}, _enhance),
    "scheduler": (["--scheduler", "dpm++"], {}, _dpm),
}


@pytest.fixture(scope="module")
def default_frames(tiny_checkpoint):
    return _direct(tiny_checkpoint)


@pytest.mark.parametrize("name", sorted(CASES))
def test_flag_has_its_effect(monkeypatch, tmp_path, tiny_checkpoint, default_frames, name):
    flags, kwargs, configure = CASES[name]
    got = _cli(monkeypatch, tmp_path, tiny_checkpoint, *flags)
    expected = _direct(tiny_checkpoint, configure, **kwargs)
    assert (got - expected).abs().max().item() <= TOL
    assert (got - default_frames).abs().max().item() > 1e-3  # the flag did change the video


def test_defaults_match_the_pipeline(monkeypatch, tmp_path, tiny_checkpoint, default_frames):
    got = _cli(monkeypatch, tmp_path, tiny_checkpoint)
    assert (got - default_frames).abs().max().item() <= TOL


def test_vae_dtype_runs_the_vae_in_it(monkeypatch, tmp_path, tiny_checkpoint, default_frames):
    # predict_i2v.py runs the VAE in bfloat16; the CLI's default keeps it in float32.
    got = _cli(monkeypatch, tmp_path, tiny_checkpoint, "--vae-dtype", "bfloat16")
    expected = _direct(tiny_checkpoint, lambda pipe: pipe.vae.to(torch.bfloat16))
    assert (got - expected).abs().max().item() <= TOL
    assert (got - default_frames).abs().max().item() > 1e-3


@pytest.mark.parametrize("choice, device", [("cpu", "cpu"), ("device", "cuda:1")])
def test_generator_device_draws_where_asked(monkeypatch, choice, device):
    # predict_i2v.py seeds a generator on its device; the default draws on the CPU. Only the device is checked here:
    # a CUDA generator needs a GPU.
    from diffusers_ruyi import cli

    made = []

    class Recorder:
        def __init__(self, where):
            made.append(str(where))

        def manual_seed(self, seed):
            made.append(seed)
            return self

    monkeypatch.setattr(torch, "Generator", Recorder)
    args = cli.build_parser().parse_args(["--image", START, "--output", "v.mp4", "--generator-device", choice])
    cli._generator(args, torch.device("cuda:1"))
    assert made == [device, 42]


def test_lora_weight_is_not_the_default(monkeypatch, tmp_path, tiny_checkpoint):
    half = _cli(monkeypatch, tmp_path, tiny_checkpoint, "--lora", str(LORA), "--lora-weight", "0.3")
    full = _cli(monkeypatch, tmp_path, tiny_checkpoint, "--lora", str(LORA))
    assert (half - full).abs().max().item() > 1e-3
    assert (full - _direct(tiny_checkpoint, _lora(1.0))).abs().max().item() <= TOL


def test_base_resolution_sets_the_size(monkeypatch, tmp_path, tiny_checkpoint):
    captured = _capture_videos(monkeypatch)
    argv = _base_argv(tmp_path, tiny_checkpoint)
    assert main([*argv, "--num-frames", "1", "--steps", "1", "--base-resolution", "64"]) == 0
    from diffusers_ruyi.pipelines.controls import get_bucket_size

    image = PIL.Image.open(START)
    assert captured[0][0].shape[:2] == get_bucket_size(image.height, image.width, 64)


def test_lora_flags_merge_each_lora_into_the_weights_as_the_original(tiny_checkpoint):
    """`--lora a --lora b --lora-weight wa --lora-weight wb` merges a then b as the original `merge_lora` does (in
    bfloat16 the same bits) and leaves no adapter layers behind."""
    from safetensors.torch import load_file

    from diffusers_ruyi.cli import _configure, _Stage, build_parser
    from diffusers_ruyi.loaders.original_checkpoint import original_lora_module_map

    pipe = load_pipe(tiny_checkpoint, dtype=torch.bfloat16)
    transformer = pipe.transformer
    paths = original_lora_module_map(transformer)
    expected = {name: param.detach().clone() for name, param in transformer.named_parameters()}
    lora = load_file(str(LORA))
    for multiplier in (0.5, -0.3):  # the original's line, applied once per file
        for key, up in lora.items():
            if key.endswith(".lora_up.weight"):
                name = key.split(".")[0]
                down = lora[f"{name}.lora_down.weight"]
                factor = lora[f"{name}.alpha"].item() / up.shape[1] if f"{name}.alpha" in lora else 1.0
                expected[f"{paths[name]}.weight"] += multiplier * factor * torch.mm(up, down)

    args = build_parser().parse_args(
        ["--image", START, "--output", "unused.mp4", "--lora", str(LORA), "--lora", str(LORA)]
        + ["--lora-weight", "0.5", "--lora-weight", "-0.3"]
    )
    _configure(pipe, args, torch.device("cpu"), torch.bfloat16, _Stage())
    assert pipe.get_list_adapters() == {}
    differing = [name for name, param in transformer.named_parameters() if not torch.equal(param, expected[name])]
    assert not differing, differing[:5]


def test_skip_offload_parks_the_long_skips_and_keeps_the_video(monkeypatch, tmp_path, tiny_checkpoint, default_frames):
    import diffusers_ruyi.hooks as hooks

    applied = []
    real_apply = hooks.apply_ruyi_skip_offload

    def spy(module, config=None):
        applied.append(config.group_size)
        real_apply(module, config)

    monkeypatch.setattr(hooks, "apply_ruyi_skip_offload", spy)
    got = _cli(monkeypatch, tmp_path, tiny_checkpoint, "--skip-offload", "5")
    assert applied == [5]
    assert torch.equal(got, _cli(monkeypatch, tmp_path, tiny_checkpoint))  # the default: off
    assert applied == [5]
    assert (got - default_frames).abs().max().item() <= TOL


def test_group_offload_offloads_only_the_transformer_block_by_block(monkeypatch, tiny_checkpoint):
    """`--offload group` (GPU only, so its call is checked here): the transformer's blocks one at a time on a CUDA
    stream, every other model on the device."""
    from diffusers_ruyi.cli import _configure, _Stage, build_parser

    pipe = load_pipe(tiny_checkpoint, dtype=torch.float32)
    calls = []
    monkeypatch.setattr(pipe, "enable_group_offload", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(pipe, "to", lambda *args, **kwargs: pytest.fail("group offload must not move the pipeline"))
    args = build_parser().parse_args(["--image", START, "--output", "unused.mp4", "--offload", "group"])
    device = torch.device("cpu")
    _configure(pipe, args, device, torch.float32, _Stage())
    modules = {name for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}
    assert "transformer" in modules and len(modules) > 1
    assert calls == [
        dict(
            onload_device=device,
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
            exclude_modules=sorted(modules - {"transformer"}, key=list(pipe.components).index),
        )
    ]


@pytest.mark.parametrize("cache", ["teacache", "first-block"])
def test_cache_flag_enables_its_cache(monkeypatch, tmp_path, tiny_checkpoint, cache):
    # `--cache teacache` / `--cache first-block` with `--cache-threshold`: the video of the pipeline with that cache
    # enabled, which (at a threshold this loose, over 6 steps) is not the uncached video.
    from diffusers import FirstBlockCacheConfig

    from diffusers_ruyi.hooks import RuyiTeaCacheConfig

    threshold = 50.0
    config = RuyiTeaCacheConfig(threshold=threshold) if cache == "teacache" else FirstBlockCacheConfig(threshold)
    got = _cli(
        monkeypatch, tmp_path, tiny_checkpoint, "--cache", cache, "--cache-threshold", str(threshold), "--steps", "6"
    )
    expected = _direct(tiny_checkpoint, lambda pipe: pipe.transformer.enable_cache(config), num_inference_steps=6)
    uncached = _direct(tiny_checkpoint, num_inference_steps=6)
    assert (got - expected).abs().max().item() <= TOL
    assert (got - uncached).abs().max().item() > 1e-3
