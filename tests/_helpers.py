"""Setup the test modules share: loading the tiny checkpoints and goldens, running a golden case, transformer inputs.

The fixtures that wrap these (``pipe``, ``start_image``, ...) are in ``conftest.py``; import the plain functions
with ``from _helpers import ...`` (pytest puts this folder on ``sys.path`` through ``conftest.py``).
"""

import contextlib
import importlib.util
import json
import logging
import pathlib
import shutil
import sys

import PIL.Image
import torch
from safetensors.torch import load_file

from diffusers_ruyi import RuyiImageToVideoPipeline, RuyiTransformer3DModel
from diffusers_ruyi.loaders.original_checkpoint import convert_transformer_config
from diffusers_ruyi.tiny import TINY_TRANSFORMER_CONFIG


ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FIXTURES = ROOT / "tests" / "fixtures"
GOLDEN = FIXTURES / "golden"
GOLDEN_EXTRA = FIXTURES / "golden_extra"
TINY_CHECKPOINT = GOLDEN / "Ruyi-tiny-random"
# The published checkpoint's format (slice VAE, model_index.json, DDPM config, CLIP .bin, bf16 embeddings).
GOLDEN_REALFMT = FIXTURES / "golden_realfmt"
TINY_REALFMT_CHECKPOINT = GOLDEN_REALFMT / "Ruyi-tiny-realfmt"
REAL_CHECKPOINT = FIXTURES / "real_checkpoint"
ORIGINAL_LORA = FIXTURES / "lora" / "ruyi_lora_original.safetensors"

# The transformer's conditioning inputs: its CFG-batched inputs but the latents, the timestep and the inpaint latents.
COND_KEYS = tuple(
    name
    for name in RuyiTransformer3DModel._cfg_batched_input_names
    if name not in ("hidden_states", "timestep", "inpaint_latents")
)


def load_script(path, name=None):
    """Imports the script at ``path`` as a module (named ``name``, by default its file name)."""
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_example(name):
    """``examples/<name>.py`` as a module; ``examples/`` goes on ``sys.path`` first, as when a script is run, so that
    the examples find their ``_example_common.py``."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return load_script(EXAMPLES / f"{name}.py")


def read_frames(path) -> list:
    """Every frame of a video file, as arrays."""
    import imageio

    reader = imageio.get_reader(str(path))
    try:
        return list(reader.iter_data())  # len(reader) is inf for ffmpeg streams
    finally:
        reader.close()


def load_pipe(checkpoint, **kwargs) -> RuyiImageToVideoPipeline:
    """``RuyiImageToVideoPipeline.from_pretrained(checkpoint, **kwargs)`` with the progress bar off."""
    pipe = RuyiImageToVideoPipeline.from_pretrained(checkpoint, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hub_cache_snapshot(cache, repo_id: str, source, file_name=None, commit: str = "0" * 40) -> pathlib.Path:
    """A Hugging Face cache under ``cache`` whose ``repo_id`` (``refs/main`` -> ``commit``) holds ``source``: a folder's
    files, or one file (named ``file_name``, default its own name). Read with ``cache_dir=cache`` (and
    ``local_files_only``), nothing touches the network."""
    repo = pathlib.Path(cache) / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    source = pathlib.Path(source)
    if source.is_dir():
        shutil.copytree(source, snapshot)
    else:
        snapshot.mkdir(parents=True)
        shutil.copy(source, snapshot / (file_name or source.name))
    return snapshot


def open_rgb(path) -> PIL.Image.Image:
    return PIL.Image.open(path).convert("RGB")


def load_video(path) -> torch.Tensor:
    """The ``video`` tensor of a golden ``.safetensors`` file."""
    return load_file(str(path))["video"]


def load_golden_case(folder, cases_file, name):
    """A case of ``folder/cases_file`` (``{"cases": [{"name": ..., "end": ...}, ...]}``), its start and end images
    (``<name>_start.png``, ``<name>_end.png`` when the case has one) and the original's video
    (``<name>_video.safetensors``)."""
    cases = {c["name"]: c for c in json.loads((folder / cases_file).read_text())["cases"]}
    case = cases[name]
    start = open_rgb(folder / f"{name}_start.png")
    end = open_rgb(folder / f"{name}_end.png") if case["end"] else None
    return case, start, end, load_video(folder / f"{name}_video.safetensors")


def run_case(pipe, case, image, last_image=None, **kwargs) -> torch.Tensor:
    """Runs a golden case (a dict with frames, h, w, steps, cfg, motion, cam, seed) and returns the video in the
    original's layout (B, C, F, H, W)."""
    frames = pipe(
        image=image,
        last_image=last_image,
        num_frames=case["frames"],
        height=case["h"],
        width=case["w"],
        num_inference_steps=case["steps"],
        guidance_scale=case["cfg"],
        motion=case["motion"],
        camera_direction=case["cam"],
        generator=torch.Generator("cpu").manual_seed(case["seed"]),
        output_type="pt",
        **kwargs,
    ).frames
    return frames.permute(0, 2, 1, 3, 4)  # (B, F, C, H, W) -> the original's (B, C, F, H, W)


def run_extra_case(pipe, case, **kwargs) -> torch.Tensor:
    """A ``golden_extra`` case: its start image is named relative to ``tests/fixtures/golden``."""
    return run_case(pipe, case, open_rgb(GOLDEN / case["image"]), **kwargs)


def extra_expected(case) -> torch.Tensor:
    """The original's video of a ``golden_extra`` case."""
    return load_video(GOLDEN_EXTRA / case["file"])


def quick_latents(pipe, image, **kwargs) -> torch.Tensor:
    """A quick run of the tiny pipeline (8 frames at 32x48, 2 steps, seed 0) that stops at the latents: for what
    only touches the transformer, such as a LoRA (decoding is covered by the pipeline tests)."""
    return pipe(
        image=image,
        num_frames=8,
        height=32,
        width=48,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        **kwargs,
    ).frames


def check_vae_operations(vae, operations, tensors, tolerance: float = 1e-4) -> None:
    """Runs a VAE golden case's ``operations`` (``{"op": "encode" | "decode", "key": ...}``) on ``tensors[key +
    ".input"]`` and checks each result (posterior mean, or decoded video) against ``tensors[key + ".output"]`` within
    ``tolerance``, and its frame count against `num_latent_frames` / `num_sample_frames`."""
    for operation in operations:
        source, expected = tensors[f"{operation['key']}.input"], tensors[f"{operation['key']}.output"]
        if operation["op"] == "encode":
            result = vae.encode(source).latent_dist.mean
            assert vae.num_latent_frames(source.shape[2]) == result.shape[2]
        else:
            result = vae.decode(source).sample
            assert vae.num_sample_frames(source.shape[2]) == result.shape[2]
        assert result.shape == expected.shape, (operation, result.shape, expected.shape)
        assert (result - expected).abs().max().item() <= tolerance, operation


def tiny_transformer(**overrides) -> RuyiTransformer3DModel:
    """The tiny golden transformer's architecture with fresh random weights (seed 0), in eval mode."""
    torch.manual_seed(0)
    config = convert_transformer_config(TINY_TRANSFORMER_CONFIG)
    config.update(overrides)
    return RuyiTransformer3DModel.from_config(config).eval()


def transformer_inputs(config=None, batch=2, frames=4, height=4, width=6, clip_tokens=16, generator=None):
    """Random forward inputs of a transformer with ``config`` (default: the tiny one), without the timestep."""
    cfg = TINY_TRANSFORMER_CONFIG if config is None else config
    generator = generator or torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return {
        "hidden_states": randn(batch, 16, frames, height, width),
        "encoder_hidden_states": randn(batch, cfg["text_len"], cfg["cross_attention_dim"]),
        "text_embedding_mask": torch.ones(batch, cfg["text_len"], dtype=torch.int64),
        "encoder_hidden_states_t5": randn(batch, cfg["text_len_t5"], cfg["cross_attention_dim_t5"]),
        "text_embedding_mask_t5": torch.ones(batch, cfg["text_len_t5"], dtype=torch.int64),
        "image_meta_size": torch.tensor([[1024.0, 1024.0, height * 8.0, width * 8.0, 0.0, 0.0]] * batch),
        "style": torch.zeros(batch, dtype=torch.int64),
        "inpaint_latents": randn(batch, cfg["in_channels"] - 16, frames, height, width),
        "clip_encoder_hidden_states": randn(batch, clip_tokens, cfg["projection_dim"]),
        "clip_attention_mask": torch.ones(batch, cfg["n_query"]),
    }


def golden_transformer_inputs() -> dict:
    """The golden transformer forward: its inputs (both CFG samples) and its ``output``."""
    return load_file(str(GOLDEN / "transformer_forward.safetensors"))


def small_golden_inputs(golden=None) -> dict:
    """The conditional sample (its CLIP mask is ones) of the golden transformer forward, two latent frames: fast
    enough to run many times."""
    golden = golden_transformer_inputs() if golden is None else golden
    inputs = {k: golden[k][1:] for k in COND_KEYS}
    inputs["hidden_states"] = golden["hidden_states"][1:, :, :2]
    inputs["inpaint_latents"] = golden["inpaint_latents"][1:, :, :2]
    inputs["timestep"] = golden["timestep"][1:]
    return inputs


def run_transformer(transformer, inputs, **kwargs) -> torch.Tensor:
    """One forward of ``transformer`` on ``small_golden_inputs``-like inputs (no grad), its output sample."""
    with torch.no_grad():
        return transformer(
            inputs["hidden_states"],
            inputs["timestep"],
            inpaint_latents=inputs["inpaint_latents"],
            return_dict=False,
            **{k: inputs[k] for k in COND_KEYS},
            **kwargs,
        )[0]


def linear_paths(transformer) -> dict:
    """Every ``nn.Linear`` of ``transformer`` by module path."""
    return {name: m for name, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}


def restored_after_test(pipe):
    """Yields ``pipe``, then drops its LoRA adapters and restores its transformer's weights (for a fixture)."""
    base = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    yield pipe
    pipe.unload_lora_weights()
    pipe.transformer.load_state_dict(base)


@contextlib.contextmanager
def logged(name: str = "diffusers.models.modeling_utils", level: int = None):
    """Yields the list of records logged to ``name`` while the block runs (diffusers' loggers do not propagate to
    caplog); with ``level``, the logger's level meanwhile."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(name)
    previous = logger.level
    logger.addHandler(handler)
    if level is not None:
        logger.setLevel(level)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def write_stored_tables_checkpoint(target, dtype: torch.dtype = torch.bfloat16) -> pathlib.Path:
    """The tiny published-format checkpoint with its transformer stored in ``dtype`` and, as the original saves them,
    each block's fixed temporal table (`t_embed.pe`, 512 rows, computed in float32 then stored in ``dtype``): what
    the published files probably look like. The original adds the stored, rounded tables."""
    from safetensors.torch import save_file

    from diffusers_ruyi.models.transformer_ruyi import _temporal_sincos_embedding

    target = pathlib.Path(target)
    shutil.copytree(TINY_REALFMT_CHECKPOINT, target)
    weights_file = target / "transformer" / "diffusion_pytorch_model.safetensors"
    weights = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in load_file(str(weights_file)).items()}
    config = json.loads((target / "transformer" / "config.json").read_text())
    width = config["num_attention_heads"] * config["attention_head_dim"]
    table = _temporal_sincos_embedding(512, width, torch.device("cpu"))[None].to(dtype)
    for index in range(config["num_layers"]):
        weights[f"blocks.{index}.t_embed.pe"] = table.clone()
    save_file(weights, str(weights_file))
    return target


def fake_snapshot_download(source, tmp_path, calls):
    """A stand-in for `huggingface_hub.snapshot_download` serving the files of the folder ``source``: each call copies
    those its `allow_patterns` match and its `ignore_patterns` do not (matched as huggingface_hub matches them) into a
    snapshot folder of its own, `snapshot-<n>`, and records `(repo_id, allow_patterns, ignore_patterns, kwargs)`."""
    import fnmatch
    import itertools
    import shutil

    numbers = itertools.count(1)

    def snapshot_download(repo_id, allow_patterns=None, ignore_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns, ignore_patterns, kwargs))
        snapshot = pathlib.Path(tmp_path) / f"snapshot-{next(numbers)}"
        for path in pathlib.Path(source).rglob("*"):
            name = path.relative_to(source).as_posix()
            allowed = allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns)
            if path.is_file() and allowed and not any(fnmatch.fnmatch(name, p) for p in ignore_patterns or ()):
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, snapshot / name)
        snapshot.mkdir(exist_ok=True)
        return str(snapshot)

    return snapshot_download


def files_under(folder) -> list:
    """The files under ``folder``, as sorted relative posix paths."""
    folder = pathlib.Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
