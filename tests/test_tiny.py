"""`diffusers_ruyi.tiny`: the tiny random pipeline has the tiny golden checkpoint's configs, so `--model tiny-random`
runs the architecture that the goldens test."""

import json

import diffusers
import pytest
import torch
from _helpers import TINY_CHECKPOINT

from diffusers_ruyi.tiny import (
    TINY_CLIP_CONFIG,
    TINY_SCHEDULER_CONFIG,
    TINY_TRANSFORMER_CONFIG,
    TINY_VAE_CONFIG,
    build_tiny_random_pipeline,
    build_tiny_scheduler,
)


def _file(*parts):
    return json.loads(TINY_CHECKPOINT.joinpath(*parts).read_text())


@pytest.mark.parametrize(
    "ours, parts",
    [
        (TINY_TRANSFORMER_CONFIG, ("transformer", "config.json")),
        (TINY_VAE_CONFIG, ("vae", "config.json")),
        (TINY_CLIP_CONFIG, ("image_encoder", "config.json")),
        (TINY_SCHEDULER_CONFIG, ("scheduler", "scheduler_config.json")),
    ],
    ids=["transformer", "vae", "image_encoder", "scheduler"],
)
def test_tiny_configs_are_the_golden_checkpoints(ours, parts):
    golden = _file(*parts)
    assert {key: golden[key] for key in ours} == ours


def test_tiny_pipeline_is_built_from_those_configs():
    pipe = build_tiny_random_pipeline()
    assert pipe.transformer.config.num_layers == TINY_TRANSFORMER_CONFIG["num_layers"]
    assert list(pipe.vae.config.block_out_channels) == TINY_VAE_CONFIG["block_out_channels"]
    assert pipe.image_encoder.config.num_hidden_layers == TINY_CLIP_CONFIG["num_hidden_layers"]
    processor = _file("image_encoder", "preprocessor_config.json")
    assert pipe.image_processor.size == processor["size"] and pipe.image_processor.crop_size == processor["crop_size"]
    assert {key: pipe.scheduler.config[key] for key in TINY_SCHEDULER_CONFIG} == TINY_SCHEDULER_CONFIG


def test_tiny_control_embeddings_have_the_golden_checkpoints_entries():
    # Kills `range(5)` -> `range(6)` in `build_tiny_random_pipeline`: the tiny pipeline holds the entries of the tiny
    # golden checkpoint's embeddings.safetensors (the defaults, motions 0-4 x every camera direction), not entries for
    # a motion 5 that no `motion` selects.
    from safetensors import safe_open

    with safe_open(str(TINY_CHECKPOINT / "embeddings.safetensors"), "pt") as f:
        golden = sorted({key.rpartition(".")[0] for key in f.keys()})
    embeddings = build_tiny_random_pipeline().control_embeddings
    assert sorted(embeddings.config.names) == golden
    assert embeddings.emb1.shape[0] == len(golden)


def test_another_sampler_takes_the_tiny_schedulers_values_as_from_a_loaded_checkpoint():
    # diffusers' `from_config` gives a sampler its own defaults for keys the source config only defaulted.
    loaded = diffusers.DDIMScheduler.from_pretrained(TINY_CHECKPOINT, subfolder="scheduler")
    for cls in (diffusers.EulerDiscreteScheduler, diffusers.DPMSolverMultistepScheduler):
        ours, theirs = cls.from_config(build_tiny_scheduler().config).config, cls.from_config(loaded.config).config
        assert {k: v for k, v in ours.items() if not k.startswith("_")} == {
            k: v for k, v in theirs.items() if not k.startswith("_")
        }


def test_building_the_tiny_pipeline_leaves_the_global_rng_alone():
    # A training script seeds the global RNG, then builds the tiny model: its own random numbers must still follow.
    from diffusers_ruyi.tiny import build_tiny_random_pipeline

    draws = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        first = build_tiny_random_pipeline()
        draws.append(torch.rand(3))
    torch.manual_seed(1)
    assert torch.equal(draws[0], torch.rand(3)) and not torch.equal(draws[0], draws[1])
    second = build_tiny_random_pipeline()  # the weights still come from its own seed
    assert all(torch.equal(a, b) for a, b in zip(first.transformer.parameters(), second.transformer.parameters()))
