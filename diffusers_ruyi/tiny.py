"""A tiny, randomly initialised Ruyi pipeline built locally: the whole data path runs offline, on a CPU.

It has the real architecture at toy sizes (the sizes of the golden test checkpoint), so it is what the CLI's
``--model tiny-random`` and the examples use when no real checkpoint is at hand. Its videos are noise.
"""

import torch
from diffusers import DDIMScheduler
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from .loaders.original_checkpoint import clip_image_processor_class, convert_transformer_config, convert_vae_config
from .models.autoencoder_kl_ruyi import AutoencoderKLRuyiCausal3D
from .models.transformer_ruyi import RuyiTransformer3DModel
from .pipelines.controls import CAMERA_DIRECTIONS, RuyiControlEmbeddings
from .pipelines.pipeline_ruyi_i2v import RuyiImageToVideoPipeline


# The original configs of the tiny golden checkpoint (tests/test_tiny.py compares them with its files), converted by
# the same code as a real checkpoint.
TINY_TRANSFORMER_CONFIG = {
    "_class_name": "HunyuanTransformer3DModel",
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 48,
    "out_channels": 32,
    "patch_size": 2,
    "n_query": 16,
    "projection_dim": 32,
    "activation_fn": "gelu-approximate",
    "sample_size": 16,
    "hidden_size": 32,
    "num_layers": 4,
    "mlp_ratio": 2.0,
    "learn_sigma": True,
    "cross_attention_dim": 32,
    "norm_type": "layer_norm",
    "cross_attention_dim_t5": 24,
    "pooled_projection_dim": 16,
    "text_len": 8,
    "text_len_t5": 12,
}
TINY_VAE_CONFIG = {
    "_class_name": "AutoencoderKLMagvit",
    "in_channels": 3,
    "out_channels": 3,
    "ch": 16,
    "ch_mult": [1, 2, 2, 2],
    "block_out_channels": [16, 32, 32, 32],
    "use_gc_blocks": None,
    "down_block_types": [
        "SpatialDownBlock3D",
        "SpatialTemporalDownBlock3D",
        "SpatialTemporalDownBlock3D",
        "SpatialDownBlock3D",
    ],
    "up_block_types": ["SpatialUpBlock3D", "SpatialTemporalUpBlock3D", "SpatialTemporalUpBlock3D", "SpatialUpBlock3D"],
    "mid_block_type": "MidBlock3D",
    "mid_block_use_attention": True,
    "mid_block_attention_type": "spatial",
    "mid_block_num_attention_heads": 1,
    "num_attention_heads": 1,
    "act_fn": "silu",
    "layers_per_block": 1,
    "latent_channels": 16,
    "norm_num_groups": 8,
    "scaling_factor": 0.7125,
    "slice_mag_vae": False,
    "slice_compression_vae": False,
    "cache_compression_vae": True,
    "mini_batch_encoder": 8,
    "mini_batch_decoder": 2,
    "upcast_vae": True,
    "spatial_group_norm": False,
}
TINY_CLIP_CONFIG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
    projection_dim=16,
    num_channels=3,
)


TINY_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.03,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False,
}


def build_tiny_scheduler() -> DDIMScheduler:
    """The tiny random pipeline's scheduler (the CLI checks `--steps` against it before building the models).

    Built from a config whose every key is given, as a scheduler loaded from a file is: another sampler made with
    `from_config` then takes these values (`timestep_spacing` included), not its own class's defaults."""
    return DDIMScheduler.from_config(TINY_SCHEDULER_CONFIG)


def build_tiny_random_pipeline(seed: int = 0) -> RuyiImageToVideoPipeline:
    """Builds a tiny random [`RuyiImageToVideoPipeline`] (float32, CPU) without any download.

    Args:
        seed (`int`, defaults to 0): Seed for the random weights.
    """
    generator = torch.Generator().manual_seed(seed)
    # The modules draw their initial weights from the global RNG: seeded here, and given back to the caller as it was
    # (a training script's `--seed` must still decide its own random numbers).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = RuyiTransformer3DModel.from_config(convert_transformer_config(TINY_TRANSFORMER_CONFIG))
        vae = AutoencoderKLRuyiCausal3D.from_config(convert_vae_config(TINY_VAE_CONFIG))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_CONFIG))
    image_processor = clip_image_processor_class()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    scheduler = build_tiny_scheduler()
    cfg = TINY_TRANSFORMER_CONFIG
    names = ["p.default", "n.default"] + [f"p.16x9movie{m}{c}" for m in range(5) for c in CAMERA_DIRECTIONS]
    flat = {}
    for name in names:
        flat[f"{name}.emb1"] = torch.randn(1, cfg["text_len"], cfg["cross_attention_dim"], generator=generator)
        flat[f"{name}.emb2"] = torch.randn(1, cfg["text_len_t5"], cfg["cross_attention_dim_t5"], generator=generator)
        flat[f"{name}.mask1"] = torch.ones(1, cfg["text_len"], dtype=torch.long)
        flat[f"{name}.mask2"] = torch.ones(1, cfg["text_len_t5"], dtype=torch.long)
    control_embeddings = RuyiControlEmbeddings.from_flat_dict(flat)
    return RuyiImageToVideoPipeline(
        vae=vae.eval(),
        transformer=transformer.eval(),
        scheduler=scheduler,
        image_encoder=image_encoder.eval(),
        image_processor=image_processor,
        control_embeddings=control_embeddings,
    )


def load_pipeline(model: str, dtype: torch.dtype = torch.float32) -> RuyiImageToVideoPipeline:
    """Loads ``model`` (hub id or folder, original or diffusers layout), or builds the tiny random pipeline for
    ``model="tiny-random"``. The transformer and image encoder take ``dtype``; the VAE stays float32."""
    if model == "tiny-random":
        pipe = build_tiny_random_pipeline()
        if dtype != torch.float32:
            pipe.transformer.to(dtype)
            pipe.image_encoder.to(dtype)
        return pipe
    return RuyiImageToVideoPipeline.from_pretrained(model, dtype={"default": dtype, "vae": torch.float32})
