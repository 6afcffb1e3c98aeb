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

from diffusers_ruyi import cli
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
    monkeypatch.setattr(cli, "write_video_atomically", lambda frames, path, fps, crf: captured.append(frames))
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


def _cli(monkeypatch, tmp_path, tiny_checkpoint, *extra, quiet=True):
    captured = _capture_videos(monkeypatch)
    argv = [a for a in _base_argv(tmp_path, tiny_checkpoint) if quiet or a != "--quiet"]
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


def _enhance(weight=3.0, **skips):
    def configure(pipe):
        apply_ruyi_enhance_a_video(pipe.transformer, RuyiEnhanceAVideoConfig(weight=weight, **skips))

    return configure


def _fp8(mode, dtype):
    def configure(pipe):
        from diffusers_ruyi.hooks import apply_fp8_mode

        apply_fp8_mode(pipe.transformer, mode, fp8_dtype=dtype, compute_dtype=torch.float32)

    return configure


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
    "enhance": (["--enhance-a-video", "3"], {}, _enhance()),
    # As in the original, weight 0 is not "off": the attention is still scaled by the clamped feta score.
    "enhance weight 0": (["--enhance-a-video", "0"], {}, _enhance(0.0)),
    # Two steps: each window leaves one step enhanced; not honouring it would give the "enhance" video.
    "enhance skip start": (["--enhance-a-video", "3", "--enhance-skip-start", "1"], {}, _enhance(skip_start_steps=1)),
    "enhance skip end": (["--enhance-a-video", "3", "--enhance-skip-end", "1"], {}, _enhance(skip_end_steps=1)),
    "fp8 e4m3fn": (["--fp8", "extreme"], {}, _fp8("extreme", torch.float8_e4m3fn)),
    "fp8 e5m2": (["--fp8", "extreme", "--fp8-dtype", "e5m2"], {}, _fp8("extreme", torch.float8_e5m2)),
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


def test_teacache_windows_and_offload_flags(monkeypatch, tmp_path, tiny_checkpoint, capsys):
    # The original's tea_cache_skip_start_steps / skip_end_steps / offload_cpu. With the default windows (3 and 1 of
    # 6 steps) the skipped steps are others, so not passing the windows on gives another video.
    from diffusers_ruyi import RuyiTransformer3DModel
    from diffusers_ruyi.hooks import RuyiTeaCacheConfig, get_ruyi_teacache_skipped_steps

    configs = []
    enable_cache = RuyiTransformer3DModel.enable_cache

    def recording(self, config):
        configs.append(config)
        return enable_cache(self, config)

    monkeypatch.setattr(RuyiTransformer3DModel, "enable_cache", recording)
    flags = ["--cache", "teacache", "--cache-threshold", "0.5", "--steps", "6"]
    windows = ["--cache-skip-start", "1", "--cache-skip-end", "2", "--cache-on-device"]
    got = _cli(monkeypatch, tmp_path, tiny_checkpoint, *flags, *windows, quiet=False)
    (config,) = configs
    assert (config.skip_start_steps, config.skip_end_steps, config.offload_to_cpu) == (1, 2, False)
    # The original's "TeaCache cached steps" line, on stderr.
    assert "TeaCache skipped" in capsys.readouterr().err

    pipes = []

    def windowed(pipe):
        pipes.append(pipe)
        pipe.transformer.enable_cache(RuyiTeaCacheConfig(threshold=0.5, skip_start_steps=1, skip_end_steps=2))

    expected = _direct(tiny_checkpoint, windowed, num_inference_steps=6)
    skipped = get_ruyi_teacache_skipped_steps(pipes[0].transformer)
    default_windows = _direct(
        tiny_checkpoint,
        lambda p: p.transformer.enable_cache(RuyiTeaCacheConfig(threshold=0.5)),
        num_inference_steps=6,
    )
    assert skipped and (got - expected).abs().max().item() <= TOL
    assert (got - default_windows).abs().max().item() > 1e-3


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cache-skip-start", "1"], "--cache-skip-start needs --cache teacache"),
        (["--cache", "first-block", "--cache-skip-end", "1"], "--cache-skip-end needs --cache teacache"),
        (["--cache-on-device"], "--cache-on-device needs --cache teacache"),
        (["--fp8-dtype", "e5m2"], "--fp8-dtype needs --fp8"),
        (["--enhance-skip-start", "2"], "--enhance-skip-start needs --enhance-a-video"),
        (["--enhance-skip-end", "2"], "--enhance-skip-end needs --enhance-a-video"),
        (["--crf", "52"], "expected an integer from 0 to 51, got '52'"),
        (["--crf", "-1"], "expected an integer from 0 to 51, got '-1'"),
    ],
)
def test_options_that_need_another_are_refused(tmp_path, capsys, flags, message):
    # Before any model is built: argparse refuses a --crf out of range, the checks the rest.
    out = tmp_path / "v.mp4"
    try:
        code = main(["--image", START, "--output", str(out), "--model", "tiny-random", *flags])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "scheduler, told", [("ddim", "TeaCache skipped 4 of 6 steps"), ("pndm", "of 15 transformer calls (6 steps)")]
)
def test_teacache_line_counts_transformer_calls_where_they_are_not_the_steps(
    monkeypatch, tmp_path, tiny_checkpoint, capsys, scheduler, told
):
    # PNDM calls the transformer more often than once a step: "10 of 6 steps" was said before.
    flags = ["--cache", "teacache", "--cache-threshold", "5", "--cache-skip-start", "1", "--cache-skip-end", "1"]
    _cli(monkeypatch, tmp_path, tiny_checkpoint, *flags, "--steps", "6", "--scheduler", scheduler, quiet=False)
    assert told in capsys.readouterr().err
