"""examples/train_ruyi_lora.py: a few CPU steps on the tiny checkpoint, resume, and loading the result."""

import json
import os
import pathlib
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from _helpers import TINY_CHECKPOINT, load_example, load_pipe, quick_latents
from safetensors import safe_open
from safetensors.torch import load_file

from diffusers_ruyi import RuyiImageToVideoPipeline


ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = TINY_CHECKPOINT


@pytest.fixture(scope="module")
def script():
    return load_example("train_ruyi_lora")


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    import imageio.v2 as imageio

    folder = tmp_path_factory.mktemp("videos")
    rng = np.random.RandomState(0)
    for i in range(3):
        base = rng.randint(0, 255, size=(1, 32, 48, 3))
        # A moving gradient so that frames differ; 10 frames > 8 exercises the random start.
        frames = [np.clip(base + 8 * t, 0, 255).astype(np.uint8)[0] for t in range(10)]
        imageio.mimwrite(folder / f"clip_{i}.mp4", frames, fps=8, macro_block_size=16)
    (folder / "metadata.jsonl").write_text('{"file_name": "clip_1.mp4", "motion": 2, "camera_direction": "left"}\n')
    # An image/video pair: clip_2.png replaces the first frame as the kept start frame.
    PIL.Image.fromarray(rng.randint(0, 255, size=(32, 48, 3)).astype(np.uint8)).save(folder / "clip_2.png")
    return folder


def _args(video_dir, output_dir, *extra):
    return [
        "--pretrained_model_name_or_path", str(TINY),
        "--data_dir", str(video_dir),
        "--output_dir", str(output_dir),
        "--num_frames", "8",
        "--height", "32",
        "--width", "48",
        "--rank", "4",
        "--lora_alpha", "8",
        "--learning_rate", "1e-2",
        "--target_modules", "to_q,to_k,to_v,to_out.0,ff.net.2,proj_out",
        "--mixed_precision", "no",
        "--seed", "0",
        "--gradient_checkpointing",
        *extra,
    ]  # fmt: skip


def test_dataset_reads_videos_pairs_and_controls(script, video_dir):
    dataset = script.VideoFolderDataset(str(video_dir), num_frames=8, height=32, width=48)
    assert len(dataset) == 3
    sample = dataset[1]
    assert sample["video"].shape == (3, 8, 32, 48)
    assert -1.0 <= sample["video"].min() and sample["video"].max() <= 1.0
    assert (sample["motion"], sample["camera_direction"]) == (2, "left")
    pair = dataset[2]
    expected = np.asarray(PIL.Image.open(video_dir / "clip_2.png").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(pair["start_image"]), expected)
    with pytest.raises(SystemExit):
        script.parse_args(_args(video_dir, "out", "--num_frames", "7"))


def test_metadata_naming_no_clip_is_refused(script, video_dir, tmp_path):
    # A misspelt file name left its clip on the default controls without a word.
    import shutil

    folder = tmp_path / "videos"
    shutil.copytree(video_dir, folder)
    (folder / "metadata.jsonl").write_text('{"file_name": "clip_O.mp4", "motion": 2}\n')
    with pytest.raises(ValueError, match=r"names clips that are not in the folder: \['clip_O.mp4'\]"):
        script.VideoFolderDataset(str(folder), num_frames=8, height=32, width=48)


@pytest.mark.parametrize(
    "sampler, steps, match",
    [
        ("PNDMScheduler", "3", r"PNDMScheduler cannot make"),
        # It makes 1000 steps but fails on the last one: the first validation, hours into a run, stopped it.
        ("DDIMScheduler", "1000", r"DDIMScheduler cannot run num_inference_steps=1000 .*Use at most 999 steps"),
    ],
)
def test_a_schedule_only_the_loaded_sampler_refuses_stops_before_training(
    script, video_dir, tmp_path, sampler, steps, match
):
    # PNDM cannot make 3 steps, which only the loaded scheduler tells (the argument check knows the step limit).
    import diffusers

    pipe = load_pipe(TINY, dtype=torch.float32)
    pipe.scheduler = getattr(diffusers, sampler).from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path / "sampler")
    args = _args(video_dir, tmp_path / "run", "--validation_steps", "1", "--validation_num_inference_steps", steps)
    args[args.index(str(TINY))] = str(tmp_path / "sampler")
    with pytest.raises(ValueError, match=f"--validation_num_inference_steps {steps}: {match}"):
        script.main(args)
    assert not any(name.startswith("checkpoint-") for name in os.listdir(tmp_path / "run"))


def test_validation_steps_the_sampler_cannot_make_stop_before_training(script, video_dir, tmp_path, capsys):
    # More steps than the scheduler's num_train_timesteps: refused with the other arguments, before the model loads
    # (the sampler's own check after the load is tested above).
    args = _args(video_dir, tmp_path / "run", "--validation_steps", "1", "--validation_num_inference_steps", "2000")
    with pytest.raises(SystemExit):
        script.main(args)
    assert "--validation_num_inference_steps must be at most the scheduler's num_train_timesteps (1000), got 2000" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()


def test_train_resume_and_load(script, video_dir, tmp_path):
    output_dir = tmp_path / "run"
    out = script.main(_args(video_dir, output_dir, "--max_train_steps", "2", "--checkpointing_steps", "1",
                            "--checkpoints_total_limit", "2", "--validation_steps", "2",
                            "--validation_num_inference_steps", "1"))  # fmt: skip
    assert out == str(output_dir)
    assert sorted(d for d in os.listdir(output_dir) if d.startswith("checkpoint-")) == ["checkpoint-1", "checkpoint-2"]
    assert os.path.isfile(output_dir / "checkpoint-2" / "pytorch_lora_weights.safetensors")
    assert os.path.isfile(output_dir / "validation" / "step-2.mp4")
    lora_file = output_dir / "pytorch_lora_weights.safetensors"
    with safe_open(lora_file, "pt") as f:
        keys = list(f.keys())
        b_norm = sum(f.get_tensor(k).abs().sum().item() for k in keys if "lora_B" in k)
        metadata = json.loads(f.metadata()["lora_adapter_metadata"])
    assert metadata["transformer.lora_alpha"] == 8 and metadata["transformer.r"] == 4
    assert keys and all(k.startswith("transformer.") and ("lora_A" in k or "lora_B" in k) for k in keys)
    assert any(".ff.net.2." in k for k in keys) and any(k.startswith("transformer.proj_out.") for k in keys)
    assert b_norm > 0  # lora_B starts at zero: two steps moved it

    # Resuming restores the checkpoint's LoRA: with nothing left to train, the saved LoRA is checkpoint-2's.
    script.main(_args(video_dir, output_dir, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"))
    resumed = load_file(lora_file)
    checkpoint = load_file(output_dir / "checkpoint-2" / "pytorch_lora_weights.safetensors")
    assert resumed.keys() == checkpoint.keys()
    assert all(torch.equal(resumed[k], checkpoint[k]) for k in resumed)

    # Resume from the latest checkpoint and train one more step, also writing the original format.
    assert not os.path.exists(output_dir / script.ORIGINAL_FORMAT_LORA)
    script.main(_args(video_dir, output_dir, "--max_train_steps", "3", "--checkpointing_steps", "1",
                      "--checkpoints_total_limit", "2", "--resume_from_checkpoint", "latest",
                      "--save_original_format"))  # fmt: skip
    assert sorted(d for d in os.listdir(output_dir) if d.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-3"]
    original = load_file(output_dir / script.ORIGINAL_FORMAT_LORA)
    diffusers_format = load_file(lora_file)
    assert len(original) == len(diffusers_format) // 2 * 3  # down, up and alpha per adapted module
    assert original["lora_unet__proj_out.alpha"].item() == 8  # --lora_alpha
    assert torch.equal(
        original["lora_unet__proj_out.lora_up.weight"], diffusers_format["transformer.proj_out.lora_B.weight"]
    )

    # The result loads into the pipeline and changes the generated video.
    pipe = load_pipe(TINY, dtype=torch.float32)
    image = PIL.Image.fromarray((np.random.RandomState(1).rand(32, 48, 3) * 255).astype("uint8"))

    def generate():
        # Latents: decoding is covered by the validation video above and the pipeline tests.
        return quick_latents(pipe, image)

    base = generate()
    # The folder holds both files now: loading it reads the diffusers-format one.
    assert all(key.startswith("transformer.") for key in RuyiImageToVideoPipeline.lora_state_dict(output_dir))
    pipe.load_lora_weights(output_dir, adapter_name="trained")
    assert pipe.transformer.peft_config["trained"].lora_alpha == 8
    with_lora = generate()
    assert with_lora.shape == base.shape == (1, 16, 2, 4, 6)
    assert not torch.allclose(with_lora, base, atol=1e-6)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(output_dir / script.ORIGINAL_FORMAT_LORA, adapter_name="original_format")
    torch.testing.assert_close(generate(), with_lora, atol=1e-5, rtol=0)


def test_trains_on_the_tiny_random_model(script, video_dir, tmp_path):
    # examples/README.md: every script takes `tiny-random`, this one as --pretrained_model_name_or_path.
    args = _args(video_dir, tmp_path / "run", "--max_train_steps", "1")
    args[args.index(str(TINY))] = "tiny-random"
    assert script.main(args) == str(tmp_path / "run")
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--frame_stride", "0"], "--frame_stride must be an integer >= 1"),
        # A size the allocator refused after the model loaded, and an empty --output_dir (os.makedirs('') failed).
        (["--height", "4112"], "--height must be a positive multiple of 16 of at most 4096"),
        (["--output_dir", ""], "--output_dir must name a folder, got ''"),
        (["--max_train_steps", "0"], "--max_train_steps must be an integer >= 1"),
        (["--train_batch_size", "0"], "--train_batch_size must be an integer >= 1"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be an integer >= 1"),
        (["--checkpointing_steps", "-1"], "--checkpointing_steps must be an integer >= 1"),
        (["--validation_steps", "0"], "--validation_steps must be an integer >= 1"),
        (["--dataloader_num_workers", "-1"], "--dataloader_num_workers must be an integer >= 0"),
        (["--learning_rate", "nan"], "--learning_rate must be a finite number > 0"),
        (["--learning_rate", "0"], "--learning_rate must be a finite number > 0"),
        (["--lora_alpha", "nan"], "--lora_alpha must be a finite number > 0"),
        (["--max_grad_norm", "nan"], "--max_grad_norm must be a finite number > 0"),
        (["--uncond_prob", "2"], "--uncond_prob must be a finite number in [0, 1]"),
        (["--last_frame_prob", "-1"], "--last_frame_prob must be a finite number in [0, 1]"),
        (["--adam_beta1", "2"], "--adam_beta1 must be a finite number in [0, 1]"),
        (["--adam_beta2", "1"], "--adam_beta1 and --adam_beta2 must be below 1"),
        (["--validation_guidance_scale", "-1"], "--validation_guidance_scale must be a finite number >= 0"),
        (["--motion", "9"], "--motion must be one of 1, 2, 3, 4, auto"),
        (["--camera_direction", "diagonal"], "--camera_direction must be one of"),
        (["--lr_scheduler", "bogus"], "--lr_scheduler must be one of"),
        (["--validation_image", "missing.png"], "--validation_image 'missing.png' does not exist"),
        (["--validation_image", "{image}"], "--validation_image is used only with --validation_steps N"),
        (["--validation_image", "{garbage}", "--validation_steps", "1"], "is not a readable image"),
        (["--seed", "-1"], "--seed must be in [0, 2**32 - 1], got -1"),
        (["--lr_warmup_steps", "5"], "--lr_warmup_steps needs a schedule with warmup"),
        (["--resume_from_checkpoint", "missing"], "--resume_from_checkpoint 'missing' is not a checkpoint folder"),
        (["--resume_from_checkpoint", "{renamed}"], "is not a checkpoint of this script (a checkpoint-<step> folder"),
        (["--resume_from_checkpoint", "{empty}"], "is not a checkpoint of this script"),
        (["--lr_scheduler", "piecewise_constant"], "--lr_scheduler must be one of"),
        (["--report_to", "tensorbored"], "--report_to must be one of all, "),
        (["--target_modules", "to_q,to_qq"], "--target_modules ['to_qq'] match no nn.Linear of the transformer"),
        (["--target_modules", "blocks.0.attn1.to_qq"], "match no nn.Linear"),
        # The tiny checkpoint has 4 blocks: blocks.4 would have passed the check (made on block 3) and failed later.
        (["--target_modules", "to_q,blocks.4.attn1.to_q"], "['blocks.4.attn1.to_q'] name blocks the transformer does"),
        (["--num_train_epochs", "0"], "--num_train_epochs must be an integer >= 1"),
        # Batches of 3 without a word.
        (["--train_batch_size", "4"], "--train_batch_size 4 is more than the 3 clip(s) in --data_dir"),
        # Tracebacks after the model had loaded (or while it loaded), an empty --output_dir left behind:
        (["--pretrained_model_name_or_path", "./nope"], "--pretrained_model_name_or_path './nope' does not exist"),
        (["--output_dir", "/proc/ruyi-lora"], "--output_dir '/proc/ruyi-lora' cannot be written"),
        (["--output_dir", "{image}/out"], "cannot be created: "),
        (["--rank", "1000000000"], "--rank must be at most the transformer's width 32, got 1000000000"),
        (["--validation_num_inference_steps", "5000"], "at most the scheduler's num_train_timesteps (1000), got 5000"),
    ],
)
def test_bad_arguments_stop_before_any_model_loads(script, video_dir, tmp_path, capsys, monkeypatch, extra, message):
    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(script.RuyiImageToVideoPipeline, "from_pretrained", must_not_load)
    (tmp_path / "best").mkdir()  # a checkpoint folder renamed by hand: its step is gone
    (tmp_path / "best" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (tmp_path / "checkpoint-5").mkdir()  # no LoRA in it
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "start.png")
    (tmp_path / "garbage.png").write_bytes(b"not an image")
    paths = {"{renamed}": str(tmp_path / "best"), "{empty}": str(tmp_path / "checkpoint-5")}
    paths["{image}"] = str(tmp_path / "start.png")
    paths["{garbage}"] = str(tmp_path / "garbage.png")
    for key, path in paths.items():
        extra = [a.replace(key, path) for a in extra]
    with pytest.raises(SystemExit) as e:
        script.main(_args(video_dir, tmp_path / "out", *extra))
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "--data_dir: No videos"),
        (lambda d: (d / "metadata.jsonl").write_text('{"file_name": "a.mp4", "motion": 9}\n'), "motion must be"),
        (lambda d: (d / "metadata.jsonl").write_text('["a.mp4"]\n'), "is not a valid entry"),
        # The clip trained on the default controls without a word.
        (
            lambda d: (d / "metadata.jsonl").write_text('{"file_name": "a.mp4", "motoin": 2}\n'),
            "metadata.jsonl:1 has the key 'motoin': did you mean 'motion'?",
        ),
        (
            lambda d: (d / "metadata.jsonl").write_text('{"file_name": "a.mp4", "camera": "left"}\n'),
            "has the key 'camera': did you mean 'camera_direction'?",
        ),
        (lambda d: (d / "out").write_text("a file"), "--output_dir"),
        (lambda d: (d / "broken.mp4").write_bytes(b"not a video"), "broken.mp4' is not a readable video"),
        # A paired start image was first read when the shuffle drew its clip, hours into a run.
        (lambda d: (d / "a.png").write_bytes(b"junk"), "paired start image '"),
        (
            lambda d: (d / "metadata.jsonl").write_text(
                '{"file_name": "a.mp4", "motion": 2}\n{"file_name": "./a.mp4"}\n'
            ),
            "metadata.jsonl:2 names 'a.mp4' a second time",
        ),
    ],
)
def test_bad_data_stops_before_any_model_loads(script, video_dir, tmp_path, capsys, setup, message):
    data = tmp_path / "data"
    data.mkdir()
    if "No videos" not in message:
        import shutil

        shutil.copy(video_dir / "clip_0.mp4", data / "a.mp4")
    setup(data)
    output = data / "out" if message == "--output_dir" else tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        script.main(_args(data, output))
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_valid_tracker_names_and_none_are_taken(script, video_dir, tmp_path, monkeypatch):
    import accelerate.tracking

    # tensorboard comes with the `train` extra, not with `test`: whether it is installed here is not the point.
    installed = [accelerate.tracking.LoggerType.TENSORBOARD]
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: installed)
    assert script.parse_args(_args(video_dir, tmp_path / "out", "--report_to", "none")).report_to is None
    assert (
        script.parse_args(_args(video_dir, tmp_path / "out", "--report_to", "tensorboard")).report_to == "tensorboard"
    )


def test_resume_latest_without_a_checkpoint_starts_anew(script, video_dir, tmp_path):
    # As diffusers' training scripts do; it was an error after the model had loaded.
    args = _args(video_dir, tmp_path / "run", "--max_train_steps", "1", "--resume_from_checkpoint", "latest")
    assert script.main(args) == str(tmp_path / "run")
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()


def test_bf16_trains_float32_lora_weights_and_validates_without_autocast(script, video_dir, tmp_path, monkeypatch):
    # In bfloat16, Adam's small updates round away on bfloat16 LoRA weights: they are float32, as in fp16 runs. The
    # validation video runs each model in its own dtype: the VAE in float32, not under autocast.
    vae_inputs = []
    build = script.build_tiny_random_pipeline

    def build_and_watch():
        pipe = build()
        pipe.vae.decoder.conv_in.register_forward_pre_hook(lambda m, args: vae_inputs.append(args[0].dtype))
        pipe.vae.decoder.conv_out.register_forward_hook(lambda m, args, out: vae_inputs.append(out.dtype))
        return pipe

    monkeypatch.setattr(script, "build_tiny_random_pipeline", build_and_watch)
    args = _args(video_dir, tmp_path / "run", "--max_train_steps", "1", "--validation_steps", "1",
                 "--validation_num_inference_steps", "1")  # fmt: skip
    args[args.index(str(TINY))] = "tiny-random"
    args[args.index("--mixed_precision") + 1] = "bf16"
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one precision per process
    try:
        script.main(args)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    saved = load_file(tmp_path / "run" / "pytorch_lora_weights.safetensors")
    assert saved and {t.dtype for t in saved.values()} == {torch.float32}
    assert vae_inputs and set(vae_inputs) == {torch.float32}


def test_a_window_is_read_without_decoding_the_rest(script, video_dir, monkeypatch):
    import imageio.v2 as imageio

    path = str(video_dir / "clip_0.mp4")
    everything = [np.asarray(f)[..., :3] for f in imageio.get_reader(path)]
    assert script.count_video_frames(path) == len(everything) == 10
    decoded = []
    get_reader = imageio.get_reader

    def counting_reader(*args, **kwargs):
        reader = get_reader(*args, **kwargs)

        class Counting:
            def __iter__(self):
                for frame in reader:
                    decoded.append(1)
                    yield frame

            def close(self):
                reader.close()

        return Counting()

    monkeypatch.setattr(imageio, "get_reader", counting_reader)
    for start, num_frames, stride in [(0, 2, 1), (3, 3, 2), (8, 4, 1)]:
        decoded.clear()
        frames = script.read_video_frames(path, num_frames, stride, start=start)
        span = (num_frames - 1) * stride + 1
        expected = everything[start : start + span : stride]
        expected += [expected[-1]] * (num_frames - len(expected))  # a short clip ends on its last frame
        assert len(frames) == num_frames and all(np.array_equal(a, b) for a, b in zip(frames, expected))
        assert len(decoded) <= min(start + span + 1, 10)


def test_paired_images_are_found_whatever_the_case_of_their_extension(script, video_dir, tmp_path):
    # Videos were found in any case but images only as `.png`: a camera's `clip.JPG` was ignored without a word.
    folder = tmp_path / "clips"
    shutil.copytree(video_dir, folder)
    os.replace(folder / "clip_2.png", folder / "clip_2.PNG")
    os.replace(folder / "clip_0.mp4", folder / "CLIP_0.MP4")
    shutil.copy(folder / "clip_2.PNG", folder / "CLIP_0.Jpg")  # any decodable image: it is read by content
    shutil.copy(folder / "clip_2.PNG", folder / "clip_0.png")  # another stem: not CLIP_0's
    dataset = script.VideoFolderDataset(str(folder), num_frames=8, height=32, width=48)
    paired = {os.path.basename(v): i and os.path.basename(i) for v, i in zip(dataset.videos, dataset.start_images)}
    assert paired["clip_2.mp4"] == "clip_2.PNG" and paired["CLIP_0.MP4"] == "CLIP_0.Jpg"


def test_a_paired_image_trains_on_the_window_it_starts(script, video_dir, monkeypatch):
    # clip_2.png stands for clip_2.mp4's first frame: its window starts there, whatever the random start would be.
    import imageio.v2 as imageio

    monkeypatch.setattr(script.random, "randint", lambda low, high: high)
    dataset = script.VideoFolderDataset(str(video_dir), num_frames=8, height=32, width=48)
    first = np.asarray(next(iter(imageio.get_reader(str(video_dir / "clip_2.mp4")))))[..., :3]
    pair = dataset[2]["video"]
    np.testing.assert_allclose(((pair[:, 0] + 1) * 127.5).permute(1, 2, 0).numpy(), first, atol=1e-3)
    unpaired = dataset[0]["video"]  # random start: the last window (frames 2-9 of 10)
    last = [np.asarray(f)[..., :3] for f in imageio.get_reader(str(video_dir / "clip_0.mp4"))][2]
    np.testing.assert_allclose(((unpaired[:, 0] + 1) * 127.5).permute(1, 2, 0).numpy(), last, atol=1e-3)


# What a resumed run must draw again as the uninterrupted one did: a checkpoint per step, unconditional and
# last-frame choices.
RESUME_FLAGS = ("--checkpointing_steps", "1", "--uncond_prob", "0.5", "--last_frame_prob", "0.5")


def _assert_same_lora(folder, expected_folder):
    got = load_file(folder / "pytorch_lora_weights.safetensors")
    expected = load_file(expected_folder / "pytorch_lora_weights.safetensors")
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)


def test_resume_reproduces_the_uninterrupted_run(script, video_dir, tmp_path):
    # 3 clips, 4 steps: resuming at step 2 goes on inside the first pass over the data, and then into the second; the
    # noise, the choices (unconditional, last frame), the clips' order and windows are drawn again as they were.
    import shutil

    extra = ("--max_train_steps", "4", *RESUME_FLAGS)
    full = tmp_path / "full"
    script.main(_args(video_dir, full, *extra))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    # By name, as diffusers' scripts: looked up in --output_dir.
    script.main(_args(video_dir, resumed, *extra, "--resume_from_checkpoint", "checkpoint-2"))
    _assert_same_lora(resumed, full)
    # Not a vacuous comparison: the two steps after the checkpoint moved the weights.
    expected = load_file(full / "pytorch_lora_weights.safetensors")
    at_checkpoint = load_file(full / "checkpoint-2" / "pytorch_lora_weights.safetensors")
    assert not all(torch.equal(at_checkpoint[k], expected[k]) for k in expected)


@pytest.fixture(scope="module")
def checkpointed_run(script, video_dir, tmp_path_factory):
    """A run's output folder holding checkpoint-1 (the run's arguments are `_args`)."""
    run = tmp_path_factory.mktemp("checkpointed") / "run"
    script.main(_args(video_dir, run, "--max_train_steps", "1", "--checkpointing_steps", "1"))
    return run


def _with(args, flag, value):
    """`args` with `flag` set to `value` (replaced, or added)."""
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
        return args
    return [*args, flag, value]


@pytest.mark.parametrize(
    "flag, value, message",
    [
        # Rescaled (alpha), or refused by PEFT after the model had loaded (rank, targets).
        ("--lora_alpha", "4", "was trained with --lora_alpha 8.0; this run has --lora_alpha 4.0"),
        ("--rank", "2", "was trained with --rank 4; this run has --rank 2"),
        ("--target_modules", "to_q", "this run has --target_modules to_q"),
        # Restored with the optimizer state: the new value was ignored without a word.
        ("--learning_rate", "1e-3", "was trained with --learning_rate 0.01; this run has --learning_rate 0.001"),
        ("--adam_weight_decay", "0", "--adam_weight_decay 0.01; this run has --adam_weight_decay 0.0"),
        ("--seed", "1", "was trained with --seed 0; this run has --seed 1"),
        ("--seed", None, "was trained with --seed 0; this run has no --seed."),
    ],
)
def test_resume_with_other_fixed_settings_stops_before_any_model_loads(
    script, video_dir, checkpointed_run, capsys, monkeypatch, flag, value, message
):
    monkeypatch.setattr(script.RuyiImageToVideoPipeline, "from_pretrained", None)  # not called
    args = _args(video_dir, checkpointed_run, "--max_train_steps", "2", "--resume_from_checkpoint", "latest")
    args = _with(args, flag, value) if value is not None else [a for a in args if a not in (flag, "0")]
    with pytest.raises(SystemExit) as e:
        script.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "checkpoint-1" in err
    assert script._checkpoints(str(checkpointed_run)) == ["checkpoint-1"]


@pytest.mark.parametrize(
    "changes, message",
    [
        # Other widths: every adapted layer of the tiny model has another size.
        ({"num_attention_heads": 4, "hidden_size": 64}, "blocks.0.attn1.to_k: lora_A [4, 32] for a [64, 64] layer"),
        # Fewer blocks: the LoRA's layers of blocks 2-3 are not there (the widths fit).
        ({"num_layers": 2}, "transformer.blocks.2.attn1.to_k: no such layer"),
    ],
)
def test_resume_with_another_transformer_stops_before_any_model_loads(
    script, video_dir, checkpointed_run, tmp_path, capsys, monkeypatch, changes, message
):
    other = tmp_path / "other-model"
    shutil.copytree(TINY, other)
    config = json.loads((other / "transformer" / "config.json").read_text())
    (other / "transformer" / "config.json").write_text(json.dumps({**config, **changes}))
    monkeypatch.setattr(script.RuyiImageToVideoPipeline, "from_pretrained", None)  # not called
    args = _args(video_dir, checkpointed_run, "--max_train_steps", "2", "--resume_from_checkpoint", "latest")
    with pytest.raises(SystemExit) as e:
        script.main(_with(args, "--pretrained_model_name_or_path", str(other)))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "holds a LoRA of another transformer than --pretrained_model_name_or_path" in err and message in err
    # The model it was trained on (here a copy of it) passes the check.
    assert script._resume_model_problem(script.parse_args(args), str(checkpointed_run / "checkpoint-1")) is None


def test_resume_takes_the_same_targets_in_another_order_and_other_step_counts(script, video_dir, checkpointed_run):
    args = _args(video_dir, checkpointed_run, "--max_train_steps", "5", "--resume_from_checkpoint", "checkpoint-1")
    for targets in ("proj_out,ff.net.2,to_out.0,to_v,to_k,to_q", " to_q, to_k,to_v , to_out.0,ff.net.2,proj_out,"):
        args = _with(args, "--target_modules", targets)
        assert script.parse_args(args).resume_from_checkpoint == str(checkpointed_run / "checkpoint-1")


def test_resume_refuses_an_incomplete_latest_and_another_folder_into_checkpoints(
    script, video_dir, checkpointed_run, tmp_path, capsys
):
    import shutil

    # `latest` is checked as a named checkpoint: an empty newest one failed after the model had loaded.
    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    (run / "checkpoint-3").mkdir()
    with pytest.raises(SystemExit):
        script.parse_args(_args(video_dir, run, "--resume_from_checkpoint", "latest"))
    assert "checkpoint-3' is not a checkpoint of this script" in capsys.readouterr().err
    # Resuming from another folder's checkpoint into one that holds checkpoints mixed the two runs' checkpoints.
    (run / "checkpoint-3").rmdir()
    with pytest.raises(SystemExit):
        script.parse_args(_args(video_dir, run, "--resume_from_checkpoint", str(checkpointed_run / "checkpoint-1")))
    assert "holds another run's checkpoints (checkpoint-1)" in capsys.readouterr().err
    # Into an empty folder it goes on (the checkpoints it writes are its own).
    other = tmp_path / "other"
    args = _args(video_dir, other, "--resume_from_checkpoint", str(checkpointed_run / "checkpoint-1"))
    assert script.parse_args(args).resume_from_checkpoint == str(checkpointed_run / "checkpoint-1")


def test_resume_from_a_checkpoint_without_its_arguments_still_refuses_another_alpha(
    script, video_dir, checkpointed_run, tmp_path
):
    # A checkpoint written before the arguments were recorded: the LoRA's own metadata still holds its alpha.
    import shutil

    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    (run / "checkpoint-1" / script.TRAINING_ARGS).unlink()
    args = _args(video_dir, run, "--max_train_steps", "2", "--resume_from_checkpoint", "latest")
    with pytest.raises(ValueError, match="trained with --lora_alpha 8, this run has 4"):
        script.main(_with(args, "--lora_alpha", "4"))


def test_a_fresh_run_into_another_runs_checkpoints_is_refused(script, video_dir, checkpointed_run, capsys):
    # It overwrote them step by step, and `latest` then mixed the two runs.
    with pytest.raises(SystemExit) as e:
        script.parse_args(_args(video_dir, checkpointed_run, "--max_train_steps", "2"))
    assert e.value.code == 2
    assert "holds another run's checkpoints (checkpoint-1): go on from them with --resume_from_checkpoint latest" in (
        capsys.readouterr().err
    )


def test_a_tracker_that_is_not_installed_is_refused(script, video_dir, tmp_path, capsys, monkeypatch):
    # accelerate only logged a warning, and the run recorded nothing.
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [accelerate.tracking.LoggerType.AIM])
    with pytest.raises(SystemExit) as e:
        script.parse_args(_args(video_dir, tmp_path / "out", "--report_to", "wandb"))
    assert e.value.code == 2
    assert "--report_to wandb needs its package installed (pip install wandb); installed here: aim" in (
        capsys.readouterr().err
    )
    assert script.parse_args(_args(video_dir, tmp_path / "out", "--report_to", "aim")).report_to == "aim"
    assert script.parse_args(_args(video_dir, tmp_path / "out", "--report_to", "all")).report_to == "all"


def test_short_clips_and_unread_metadata_keys_are_reported(script, video_dir, tmp_path, caplog):
    import shutil

    import imageio.v2 as imageio

    data = tmp_path / "data"
    shutil.copytree(video_dir, data)
    imageio.mimwrite(data / "still.mp4", [np.zeros((32, 48, 3), np.uint8)] * 3, fps=8, macro_block_size=16)
    # Keys of other tools are not taken for misspellings: `name` (inside file_name), `motion_score`, `direction`
    # (inside camera_direction, not its start), a `motion` spelt otherwise next to `motion` itself. They are named.
    entries = '{"file_name": "clip_1.mp4", "motion": 2, "text": "a cat", "name": "x", "motion_score": 1, "Motion": 1, '
    entries += '"direction": "up"}'
    (data / "metadata.jsonl").write_text(entries + "\n")
    dataset = script.VideoFolderDataset(str(data), 8, 32, 48)
    assert dataset.short_clips == [str(data / "still.mp4")]
    assert dataset.ignored_keys == ["text", "name", "motion_score", "Motion", "direction"]
    # A stride makes a window span more frames: 8 frames every 2nd span 15, more than the 10 the clips have.
    assert len(script.VideoFolderDataset(str(data), 8, 32, 48, frame_stride=2).short_clips) == 4
    assert script.VideoFolderDataset(str(data), 1, 32, 48).short_clips == []
    with caplog.at_level("WARNING"):
        script.main(_args(data, tmp_path / "run", "--max_train_steps", "1"))
    assert "1 clip(s) have fewer than the 8 frames a window spans and are padded with their last frame: still.mp4" in (
        caplog.text
    )
    assert (
        "metadata.jsonl keys this script does not read, ignored: text, name, motion_score, Motion, direction"
        in caplog.text
    )


def test_num_train_epochs_sets_the_steps(script, video_dir, tmp_path):
    # 3 clips in batches of 1: three steps per pass, so 2 epochs are 6 steps.
    args = _args(video_dir, tmp_path / "run", "--num_train_epochs", "2", "--checkpointing_steps", "1")
    script.main(args)
    assert script._checkpoints(str(tmp_path / "run")) == [f"checkpoint-{i}" for i in (1, 2, 3, 4, 5, 6)]
    # --max_train_steps overrides it, as in diffusers' scripts.
    script.main(_args(video_dir, tmp_path / "run2", "--num_train_epochs", "2", "--max_train_steps", "1"))
    assert not any(d.startswith("checkpoint-") for d in os.listdir(tmp_path / "run2"))


def test_a_failed_checkpoint_save_leaves_no_checkpoint_and_keeps_the_last(script, video_dir, tmp_path, monkeypatch):
    # A full disk during a save left a partial checkpoint-N that --resume_from_checkpoint latest then picked, and
    # --checkpoints_total_limit had already removed the last good one.
    from accelerate import Accelerator

    save_state = Accelerator.save_state
    calls = []

    def fail_second_save(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            os.makedirs(output_dir, exist_ok=True)
            (pathlib.Path(output_dir) / "optimizer.bin").write_bytes(b"trunc")
            raise OSError("No space left on device")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", fail_second_save)
    args = _args(video_dir, tmp_path / "run", "--max_train_steps", "2", "--checkpointing_steps", "1")
    with pytest.raises(OSError, match="No space left"):
        script.main([*args, "--checkpoints_total_limit", "1"])
    assert script._checkpoints(str(tmp_path / "run")) == ["checkpoint-1"]
    assert (tmp_path / "run" / "checkpoint-1" / "pytorch_lora_weights.safetensors").is_file()
    monkeypatch.setattr(Accelerator, "save_state", save_state)
    script.main([*args, "--checkpoints_total_limit", "1", "--resume_from_checkpoint", "latest"])
    assert script._checkpoints(str(tmp_path / "run")) == ["checkpoint-2"]
    assert not (tmp_path / "run" / "checkpoint-2.partial").exists()


@pytest.mark.parametrize("inside", ["out", "."])
def test_training_does_not_read_its_own_validation_videos(script, video_dir, tmp_path, inside):
    # An --output_dir inside --data_dir, or the same folder: a previous run's validation video (here a broken one,
    # which the dataset would refuse) is not a training clip, in the early check and in the run.
    import shutil

    data = tmp_path / "data"
    shutil.copytree(video_dir, data)
    output_dir = data / inside
    (output_dir / "validation").mkdir(parents=True)
    (output_dir / "validation" / "step-1.mp4").write_bytes(b"not a video")
    script.main(_args(data, output_dir, "--max_train_steps", "1"))
    assert (output_dir / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize("limit, kept", [("1", ["checkpoint-2"]), ("2", ["checkpoint-1", "checkpoint-2"])])
def test_a_resumed_run_keeps_its_own_checkpoints(script, video_dir, tmp_path, limit, kept):
    # Resumed from checkpoint-1 while an abandoned run's checkpoint-3 remains: --checkpoints_total_limit keeps the
    # checkpoint just written and this run's earlier ones, not the other run's later one (`latest` would pick it).
    run = tmp_path / "run"
    script.main(_args(video_dir, run, "--max_train_steps", "3", "--checkpointing_steps", "1"))
    args = _args(video_dir, run, "--max_train_steps", "2", "--checkpointing_steps", "1")
    script.main([*args, "--checkpoints_total_limit", limit, "--resume_from_checkpoint", "checkpoint-1"])
    assert script._checkpoints(str(run)) == kept


def test_the_output_folder_inside_the_data_is_not_read_as_data(script, video_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(video_dir, data)
    (data / "out" / "validation").mkdir(parents=True)
    shutil.copy(video_dir / "clip_0.mp4", data / "out" / "validation" / "step-1.mp4")
    dataset = script.VideoFolderDataset(str(data), 8, 32, 48, exclude=str(data / "out"))
    assert len(dataset) == 3 and not any("step-1" in v for v in dataset.videos)
    assert len(script.VideoFolderDataset(str(data), 8, 32, 48)) == 4


@pytest.mark.slow
def test_two_processes_resume_as_the_uninterrupted_run(script, tmp_path):
    # DDP on the CPU (gloo), two processes. Each saves its own generators' states (accelerate's custom-object
    # checkpoints hold the main process's only, so every process resumed with its noise), and a pass counts the batches
    # each process gets: 5 clips in batches of 1 are 2 per process (accelerate drops the one that does not go round),
    # so 2 epochs are 4 steps, and resuming at step 1 goes on inside the first pass.
    import shutil
    import subprocess
    import sys

    import imageio.v2 as imageio

    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.RandomState(3)
    for i in range(5):
        base = rng.randint(0, 255, size=(32, 48, 3))
        frames = [np.clip(base + 8 * t, 0, 255).astype(np.uint8) for t in range(10)]
        imageio.mimwrite(videos / f"clip_{i}.mp4", frames, fps=8, macro_block_size=16)

    def train(output_dir, *extra):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        command += [str(ROOT / "examples" / "train_ruyi_lora.py"), *_args(videos, output_dir, *extra)]
        command.remove("--gradient_checkpointing")
        env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]

    extra = ("--num_train_epochs", "2", *RESUME_FLAGS)
    train(tmp_path / "full", *extra)
    assert script._checkpoints(str(tmp_path / "full")) == [f"checkpoint-{i}" for i in (1, 2, 3, 4)]
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-1", tmp_path / "resumed" / "checkpoint-1")
    train(tmp_path / "resumed", *extra, "--resume_from_checkpoint", "latest")
    _assert_same_lora(tmp_path / "resumed", tmp_path / "full")
