"""What a Python user meets first: argument checks that name the problem, progress bars for every long phase, phases
in the log, one dtype rule for both checkpoint layouts, and loading errors that say what is wrong in one exception."""

import io
import logging
import os

import PIL.Image
import pytest
import torch
from _helpers import logged

from diffusers_ruyi import RuyiImageToVideoPipeline
from diffusers_ruyi.loaders.original_checkpoint import local_folder
from diffusers_ruyi.tiny import build_tiny_random_pipeline


IMAGE = PIL.Image.new("RGB", (48, 32), (90, 140, 200))
SMALL = dict(num_frames=8, height=32, width=48, num_inference_steps=1)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_random_pipeline()


class _Stop(Exception):
    pass


def _stop_after_checks(pipe, monkeypatch):
    """Makes a call stop right after the argument checks (the first model call raises `_Stop`)."""

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(pipe, "encode_image", stop)


@pytest.mark.parametrize("value", [-1, -0.5, float("nan"), float("inf")])
def test_guidance_scale_must_be_finite_and_not_negative(pipe, monkeypatch, value):
    _stop_after_checks(pipe, monkeypatch)
    with pytest.raises(ValueError, match="`guidance_scale` must be a finite number >= 0"):
        pipe(image=IMAGE, guidance_scale=value, **SMALL)


@pytest.mark.parametrize("value", [0, 0.5, 1, 7.0])
def test_guidance_scale_accepted(pipe, monkeypatch, value):
    _stop_after_checks(pipe, monkeypatch)
    with pytest.raises(_Stop):  # the checks passed
        pipe(image=IMAGE, guidance_scale=value, **SMALL)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def pipeline_log():
    # The package's loggers sit under "diffusers_ruyi" (plain Python logging, not diffusers' verbosity setting).
    logger = logging.getLogger("diffusers_ruyi")
    handler = _Records()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler.messages
    logger.setLevel(level)
    logger.removeHandler(handler)


@pytest.mark.parametrize("num_frames, warned", [(120, False), (128, True)])
def test_more_frames_than_trained_warns(pipe, monkeypatch, pipeline_log, num_frames, warned):
    _stop_after_checks(pipe, monkeypatch)
    with pytest.raises(_Stop):
        pipe(image=IMAGE, **{**SMALL, "num_frames": num_frames})
    warnings = [m for m in pipeline_log if "trained on" in m]
    assert bool(warnings) == warned
    if warned:
        assert "`num_frames`=128 is more than the 120 frames" in warnings[0]


@pytest.mark.parametrize(
    "kwargs, scheduler, message",
    [
        ({"eta": 0.5}, "EulerDiscreteScheduler", "`eta`=0.5 is ignored: EulerDiscreteScheduler takes no eta"),
        ({"eta": 0.5}, None, None),  # DDIM takes it
        ({"guidance_rescale": 0.7, "guidance_scale": 1.0}, None, "`guidance_rescale`=0.7 is ignored"),
        ({"guidance_rescale": 0.7, "guidance_scale": 3.0}, None, None),
    ],
)
def test_settings_a_call_would_not_use_are_said(pipe, monkeypatch, pipeline_log, kwargs, scheduler, message):
    import diffusers

    _stop_after_checks(pipe, monkeypatch)
    if scheduler is not None:
        monkeypatch.setattr(pipe, "scheduler", getattr(diffusers, scheduler).from_config(pipe.scheduler.config))
    with pytest.raises(_Stop):
        pipe(image=IMAGE, **{**SMALL, **kwargs})
    warnings = [m for m in pipeline_log if "is ignored" in m]
    assert [message in w for w in warnings] == ([True] if message else [])


class _Bars:
    """Records every progress bar the pipeline opens: description, total, and how far it got."""

    def __init__(self, pipe, monkeypatch):
        self.bars = []
        original = pipe.progress_bar

        def progress_bar(iterable=None, total=None):
            bar = original(iterable=iterable, total=total)
            self.bars.append(bar)
            return bar

        monkeypatch.setattr(pipe, "progress_bar", progress_bar)

    def summary(self):
        return [(bar.desc, bar.total, bar.n) for bar in self.bars]


@pytest.mark.parametrize(
    "tiling, slicing, images, num_frames, size, encode_calls, decode_calls",
    [
        (False, False, 1, 8, (32, 48), 2, 1),  # 2 encodes (mask, masked video) x 1 chunk; 1 decode chunk
        (False, False, 1, 1, (32, 48), 2, 1),  # a single frame: one chunk each
        (False, False, 1, 16, (32, 48), 2 * 2, 2),  # two 8-frame chunks, two 2-latent chunks
        (True, False, 1, 8, (96, 144), 2 * 4 * 4, 4 * 4),  # tiles of at most 32x48 pixels: 4 rows x 4 columns
        (True, True, 2, 8, (64, 96), 2 * 2 * 3 * 3, 2 * 3 * 3),  # two videos, each in 3 x 3 tiles
        # The original's tiling, 32-pixel tiles every 24 pixels: 3 x 4 tiles, and decoding its corner tile once more.
        ("original", False, 1, 8, (64, 96), 2 * 3 * 4, 3 * 4 + 1),
    ],
)
def test_vae_progress_bars_count_every_chunk_and_tile(
    monkeypatch, tiling, slicing, images, num_frames, size, encode_calls, decode_calls
):
    pipe = build_tiny_random_pipeline()
    if tiling == "original":
        pipe.vae.enable_original_tiling(tile_sample_min_size=32, tile_overlap_factor=0.25)
    elif tiling:
        pipe.vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=48)
    if slicing:
        pipe.vae.enable_slicing()
    config = dict(desc="a description for the denoising bar", file=io.StringIO())  # disabled bars count nothing
    pipe.set_progress_bar_config(**config)
    bars = _Bars(pipe, monkeypatch)
    with logged("diffusers_ruyi.pipelines.pipeline_ruyi_i2v", logging.INFO) as records:
        pipe(image=[IMAGE] * images, **{**SMALL, "num_frames": num_frames, "height": size[0], "width": size[1]})
    # The mask and the masked video of each video.
    expected = f"Encoding {2 * images} conditioning video(s) of {num_frames} frames with the VAE"
    assert expected in [record.getMessage() for record in records]
    assert bars.summary() == [
        ("VAE encode", encode_calls, encode_calls),
        ("a description for the denoising bar", 1, 1),
        ("VAE decode", decode_calls, decode_calls),
    ]
    assert pipe._progress_bar_config == config
    # The hooks that advance the bars are gone after the call.
    assert not pipe.vae.encoder._forward_hooks and not pipe.vae.decoder._forward_hooks


def test_vae_encode_reuses_equal_slices_and_masks_and_its_bar_ends_full(monkeypatch):
    # Three videos of 24 frames, each with one start frame: 3 slices per conditioning video, the last two equal
    # (masked frames), and the same mask video three times. The encoder runs 2 slices for the mask (then reuses it)
    # and 2 per masked video: 8 of the bar's 18 chunks.
    pipe = build_tiny_random_pipeline()
    pipe.set_progress_bar_config(file=io.StringIO())
    bars = _Bars(pipe, monkeypatch)
    calls = []
    pipe.vae.encoder.register_forward_hook(lambda *_: calls.append(1))
    images = [IMAGE, PIL.Image.new("RGB", (48, 32), (10, 20, 30)), PIL.Image.new("RGB", (48, 32), (200, 0, 0))]
    pipe(image=images, **{**SMALL, "num_frames": 24, "height": 32, "width": 48})
    assert len(calls) == 2 + 3 * 2
    assert bars.summary()[0] == ("VAE encode", 18, 18)


def test_progress_bars_show_by_default_and_follow_the_config(capsys):
    pipe = build_tiny_random_pipeline()
    pipe(image=IMAGE, **SMALL)
    err = capsys.readouterr().err
    assert "VAE encode: 100%" in err and "VAE decode: 100%" in err and "100%|" in err
    pipe.set_progress_bar_config(disable=True)
    pipe(image=IMAGE, **SMALL)
    assert capsys.readouterr().err == ""


def test_phases_are_logged_at_info_level(pipeline_log):
    pipe = build_tiny_random_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe(image=IMAGE, **SMALL)
    assert pipeline_log == [
        "Encoding 1 start frame(s) with CLIP",
        "Encoding 2 conditioning video(s) of 8 frames with the VAE",
        "Decoding 2 latent frame(s) with the VAE",
    ]


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "diffusers-layout"
    build_tiny_random_pipeline().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_dtype_names_and_refusals_are_the_same_on_both_layouts(tiny_checkpoint, diffusers_folder, layout):
    folder = tiny_checkpoint if layout == "original" else diffusers_folder
    pipe = RuyiImageToVideoPipeline.from_pretrained(folder, dtype="bfloat16")
    assert pipe.transformer.dtype == pipe.image_encoder.dtype == torch.bfloat16
    pipe = RuyiImageToVideoPipeline.from_pretrained(folder, dtype={"default": "bf16", "vae": "float32"})
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    for bad in (torch.float8_e4m3fn, "float8", "int8"):
        with pytest.raises(ValueError, match="must be one of") as error:
            RuyiImageToVideoPipeline.from_pretrained(folder, dtype=bad)
        if bad is torch.float8_e4m3fn:
            assert "apply_fp8_mode" in str(error.value)  # says what to do instead


@pytest.mark.parametrize("component", ["transformer", "vae", "image_encoder"])
def test_truncated_diffusers_folder_is_one_clear_error(diffusers_folder, tmp_path, component):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(diffusers_folder, folder)
    weights = next((folder / component).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 10])
    with pytest.raises(ValueError, match="is truncated") as error:
        RuyiImageToVideoPipeline.from_pretrained(folder)
    assert str(weights) in str(error.value) and "Download it again" in str(error.value)
    assert error.value.__cause__ is None and error.value.__context__ is None  # one exception, not a chain


def test_mistyped_local_path_is_one_error():
    with pytest.raises(FileNotFoundError, match="is not an existing folder") as error:
        RuyiImageToVideoPipeline.from_pretrained("./checkpoints/Ruyi-Mini-7B")
    assert error.value.__cause__ is None and error.value.__context__ is None


def test_hub_id_offline_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="downloading is off") as error:
        local_folder("owner/not-cached", {"cache_dir": str(tmp_path)})
    assert "hf download owner/not-cached" in str(error.value)
    # The hub client's 50-line chain is not shown.
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_hub_unreachable_is_a_connection_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # a closed local port
    with pytest.raises(ConnectionError, match="could not be downloaded") as error:
        local_folder("owner/not-cached", {"cache_dir": str(tmp_path)})
    assert "Check the network connection" in str(error.value) and "Connect" in str(error.value)  # the cause
    assert error.value.__cause__ is None and error.value.__suppress_context__


@pytest.mark.parametrize("link", ["cause", "context"])
def test_hub_failure_names_its_cause_however_it_is_chained(link, monkeypatch):
    # Kills `e.__cause__ or e.__context__` -> `and` in local_folder (loaders/original_checkpoint.py): the hub client
    # raises its error `from` the network error, or while handling it; either one is the reason to show.
    import huggingface_hub
    import huggingface_hub.constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    def failing_download(repo_id, **kwargs):
        network = OSError("no route to host")
        if link == "cause":
            raise LocalEntryNotFoundError("cannot find the requested files") from network
        try:
            raise network
        except OSError:
            raise LocalEntryNotFoundError("cannot find the requested files")  # noqa: B904 (the chain under test)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing_download)
    with pytest.raises(ConnectionError, match=r"the Hub could not be reached \(OSError: no route to host\)"):
        local_folder("owner/name", {})


@pytest.mark.parametrize(
    "subfolder, allow, ignore, expected",
    [
        ("transformer", None, None, {"allow_patterns": ["transformer/*"]}),
        # An explicit list wins over the subfolder's; ignore patterns go with either (they once displaced it).
        ("transformer", ["transformer/config.json"], None, {"allow_patterns": ["transformer/config.json"]}),
        ("transformer", None, ["*.bin"], {"allow_patterns": ["transformer/*"], "ignore_patterns": ["*.bin"]}),
        ("", None, ["*.bin"], {"ignore_patterns": ["*.bin"]}),
    ],
)
def test_local_folder_downloads_what_it_is_asked_for(tmp_path, monkeypatch, subfolder, allow, ignore, expected):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: (calls.append(kw), str(tmp_path))[1])
    folder = local_folder("owner/name", {"subfolder": subfolder}, allow_patterns=allow, ignore_patterns=ignore)
    assert calls == [expected] and folder == os.path.join(str(tmp_path), subfolder)
