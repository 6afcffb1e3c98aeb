"""Runs the ORIGINAL Ruyi implementation for side-by-side benchmarks. Never imported by the package.

It imports the original code from a checkout the user gives (``--reference``) and must run with that checkout's
own interpreter (its venv: diffusers 0.31, see tests/fixtures/README.md). Nothing of the original is copied here.

    <ref-venv>/bin/python benchmarks/original_driver.py --reference /path/to/Ruyi-Models make-checkpoint ...
    <ref-venv>/bin/python benchmarks/original_driver.py --reference /path/to/Ruyi-Models run-pipeline ...
    <ref-venv>/bin/python benchmarks/original_driver.py --reference /path/to/Ruyi-Models run-vae ...
    <ref-venv>/bin/python benchmarks/original_driver.py --reference /path/to/Ruyi-Models estimate-transformer-memory ...

Each command prints one JSON line: seconds, peak memory, where outputs were written, or estimated bytes.
"""

import argparse
import json
import os
import resource
import shutil
import sys
import time


# The yaml extras Ruyi's predict script applies on top of config.json.
TRANSFORMER_EXTRAS = {"basic_block_type": "basic", "after_norm": False, "time_position_encoding": True}
# predict_i2v.py's sampler names -> the diffusers class it builds from the checkpoint's scheduler folder.
SCHEDULERS = {
    "DDIM": "DDIMScheduler",
    "DPM++": "DPMSolverMultistepScheduler",
    "Euler": "EulerDiscreteScheduler",
    "Euler A": "EulerAncestralDiscreteScheduler",
    "PNDM": "PNDMScheduler",
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _provide_pkg_resources() -> None:
    """The original compares versions with `pkg_resources.parse_version`, which setuptools 82 and later no longer
    ship: without it, stand in a module with that one function (`packaging`'s, which it wrapped)."""
    import importlib.util

    if importlib.util.find_spec("pkg_resources") is not None:
        return
    import types

    from packaging.version import parse

    sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)


def _import_original(path: str):
    sys.path.insert(0, os.path.abspath(path))
    _provide_pkg_resources()
    import ruyi.models.autoencoder_magvit as vae_mod  # noqa: F401
    import ruyi.models.transformer3d as tr_mod  # noqa: F401
    import ruyi.pipeline.pipeline_ruyi_inpaint as pipe_mod  # noqa: F401

    return vae_mod, tr_mod, pipe_mod


def make_checkpoint(args) -> dict:
    """Writes a random checkpoint in the original layout: transformer and VAE from the given configs (built by the
    original classes, so the layout is the original's own), other components copied from ``--template``."""
    import torch

    vae_mod, tr_mod, _ = _import_original(args.reference)
    with open(args.transformer_config) as f:
        tconfig = json.load(f)
    with open(args.vae_config) as f:
        vconfig = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    transformer = tr_mod.HunyuanTransformer3DModel.from_config(tconfig, **TRANSFORMER_EXTRAS)
    with torch.no_grad():
        for p in transformer.parameters():  # zero-initialised layers would make the benchmark trivial
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    transformer.save_pretrained(os.path.join(args.out, "transformer"), safe_serialization=True)
    # The hub config carries no yaml extras; remove the ones save_pretrained recorded.
    cfg_path = os.path.join(args.out, "transformer", "config.json")
    with open(cfg_path) as f:
        saved = json.load(f)
    for k in TRANSFORMER_EXTRAS:
        saved.pop(k, None)
    with open(cfg_path, "w") as f:
        json.dump(saved, f, indent=2)
    vae = vae_mod.AutoencoderKLMagvit.from_config(vconfig)
    # The original samples the VAE posterior from the global RNG; a ~0 variance (logvar -30, as in the golden tiny
    # checkpoint) makes sample() equal mode(), so both implementations can be compared value for value.
    with torch.no_grad():
        half = vae.quant_conv.weight.shape[0] // 2
        vae.quant_conv.weight[half:] = 0
        vae.quant_conv.bias[half:] = -30
    vae.save_pretrained(os.path.join(args.out, "vae"), safe_serialization=True)
    for entry in ("image_encoder", "scheduler", "embeddings.safetensors", "model_index.json"):
        src = os.path.join(args.template, entry)
        dst = os.path.join(args.out, entry)
        if not os.path.exists(src):  # model_index.json: only the published layout has one
            continue
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy(src, dst)
    return {"checkpoint": args.out}


def run_pipeline(args) -> dict:
    import diffusers
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    vae_mod, tr_mod, pipe_mod = _import_original(args.reference)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    path = args.checkpoint
    vae = vae_mod.AutoencoderKLMagvit.from_pretrained(path, subfolder="vae").to(dtype)
    transformer = tr_mod.HunyuanTransformer3DModel.from_pretrained_2d(
        path, subfolder="transformer", transformer_additional_kwargs=TRANSFORMER_EXTRAS
    ).to(dtype)
    encoder = CLIPVisionModelWithProjection.from_pretrained(path, subfolder="image_encoder").to(dtype)
    processor = CLIPImageProcessor.from_pretrained(path, subfolder="image_encoder")
    scheduler = getattr(diffusers, SCHEDULERS[args.scheduler]).from_pretrained(path, subfolder="scheduler")
    pipe = pipe_mod.RuyiInpaintPipeline(
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        clip_image_encoder=encoder,
        clip_image_processor=processor,
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    if args.posterior_noise_as_package:
        _posterior_noise_as_package(pipe)
    if args.offload_steps is not None:
        pipe.transformer.hidden_cache_size = args.offload_steps
    emb = load_file(os.path.join(path, "embeddings.safetensors"))
    motion = "0" if args.motion == "auto" else args.motion
    key = f"p.16x9movie{motion}{args.cam}"

    # In the run's dtype: the published embeddings are bfloat16, the dtype predict_i2v.py runs in, and the original
    # pipeline makes its latents in the embeddings' dtype.
    def pick(field, prefix=key):
        return emb.get(f"{prefix}.{field}", emb[f"p.default.{field}"]).to(device, dtype)

    def neg(field):
        return emb[f"n.default.{field}"].to(device, dtype)

    from ruyi.utils.utils import get_image_to_video_latent

    # Lists, as predict_i2v.py passes them; several --image flags are several start frames of one video.
    start = [Image.open(path).convert("RGB") for path in args.image]
    end = [Image.open(path).convert("RGB") for path in args.end_image] if args.end_image else None
    if args.lora_out:
        _random_lora(pipe, args)
    pipe.transformer.tea_cache.initialize(
        args.teacache, args.teacache_threshold, args.teacache_skip_start, args.teacache_skip_end, args.steps, False
    )
    pipe.transformer.enhance_a_video.initialize(
        args.enhance_a_video, args.enhance_weight, args.enhance_skip_start, args.enhance_skip_end, args.steps
    )

    denoise_times = []
    if args.time_denoiser:
        # Wall time of every transformer call (the denoising steps), synchronised on CUDA.
        untimed_forward = pipe.transformer.forward

        def timed_forward(*f_args, **f_kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            output = untimed_forward(*f_args, **f_kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            denoise_times.append(time.perf_counter() - start)
            return output

        pipe.transformer.forward = timed_forward

    def generate():
        # Inside the timed call: the package's pipeline resizes and stacks its frames in its own call too.
        video, mask, clip_image = get_image_to_video_latent(
            start, end, video_length=args.frames, sample_size=(args.h, args.w)
        )
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32):
            return pipe(
                prompt_embeds=pick("emb1"),
                prompt_attention_mask=pick("mask1"),
                prompt_embeds_2=pick("emb2"),
                prompt_attention_mask_2=pick("mask2"),
                negative_prompt_embeds=neg("emb1"),
                negative_prompt_attention_mask=neg("mask1"),
                negative_prompt_embeds_2=neg("emb2"),
                negative_prompt_attention_mask_2=neg("mask2"),
                video_length=args.frames,
                height=args.h,
                width=args.w,
                generator=torch.Generator(device).manual_seed(args.seed),
                guidance_scale=args.cfg,
                num_inference_steps=args.steps,
                video=video,
                mask_video=mask,
                clip_image=clip_image,
                clip_apply_ratio=args.clip_apply_ratio,
                guidance_rescale=args.guidance_rescale,
            ).videos

    # Untimed calls first, as the package's side of a benchmark gets them: the first call pays one-off costs.
    for _ in range(args.warmup):
        generate()
    skipped_before = pipe.transformer.tea_cache.skip_count if args.teacache else 0
    timings = []
    for _ in range(args.repeats):
        denoise_times.clear()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = generate()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - t0)
    result = {
        "seconds": sorted(timings)[len(timings) // 2],
        "peak_rss_mb": _peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }
    if args.time_denoiser:
        result["denoise_seconds_per_step"] = sum(denoise_times) / max(1, len(denoise_times))
    if args.teacache:
        # Counted over all timed repeats; the original never resets it.
        result["teacache_skip_count"] = pipe.transformer.tea_cache.skip_count - skipped_before
    if args.save:
        video = torch.from_numpy(np.asarray(out)) if not isinstance(out, torch.Tensor) else out
        save_file({"video": video.float().contiguous()}, args.save)
        result["saved"] = args.save
    return result


def _posterior_noise_as_package(pipe) -> None:
    """Gives the original's VAE posterior samples the noise diffusers-ruyi draws, for a comparison of the two
    implementations alone. The original draws that noise from the global RNG, which an import reseeds at random on
    every start, so its own videos change from run to run wherever the noise reaches a bfloat16 rounding;
    diffusers-ruyi draws it from a generator seeded from the user's generator's state at the same point (after the
    initial noise), in the same order (every video's mask, then every masked video). The seeding repeats the
    pipeline's `_posterior_generator`, which this interpreter cannot import; tests/benchmarks/test_original_driver.py
    keeps the two equal."""
    import hashlib

    import torch
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    state = {}
    prepare = pipe.prepare_mask_latents

    def prepare_mask_latents(*args, **kwargs):
        generator = kwargs["generator"] if "generator" in kwargs else args[7]
        digest = hashlib.blake2b(generator.get_state().numpy().tobytes(), digest_size=8).digest()
        state["generator"] = torch.Generator(generator.device).manual_seed(int.from_bytes(digest, "little"))
        try:
            return prepare(*args, **kwargs)
        finally:
            state.clear()

    sample = DiagonalGaussianDistribution.sample

    def sample_with_package_noise(self, generator=None):
        return sample(self, generator if generator is not None else state.get("generator"))

    pipe.prepare_mask_latents = prepare_mask_latents
    DiagonalGaussianDistribution.sample = sample_with_package_noise


def random_lora_weights(state: dict, alpha: float) -> dict:
    """Random values for a LoRA state dict in the original's layout (``<module>.alpha``, ``.lora_down.weight``,
    ``.lora_up.weight``): alphas of ``alpha``, ``alpha + 1`` and ``alpha + 2`` in turn, module by module, and weights
    from the global RNG, in sorted key order."""
    import torch

    weights, modules = {}, 0
    for key, value in sorted(state.items()):
        if key.endswith(".alpha"):
            # Counted per module: an index over all keys (an alpha and two weights each) gives every alpha the same.
            weights[key] = torch.tensor(alpha + modules % 3)
            modules += 1
        else:
            weights[key] = torch.randn_like(value) * 0.05
    return weights


def _random_lora(pipe, args) -> None:
    """Writes a random LoRA in the original format with the original's own `LoRANetwork` (every module it wraps, a
    different alpha per module) to `--lora-out`, and merges it with `merge_lora(..., --lora-weight)`, as
    predict_i2v.py merges a LoRA file."""
    import copy

    import torch
    from ruyi.utils.lora_utils import LoRANetwork, merge_lora

    torch.manual_seed(args.lora_seed)
    # The network patches the forward of what it wraps: build it on a copy, merge into the pipeline's model.
    adapted = copy.deepcopy(pipe.transformer)
    network = LoRANetwork(text_encoder=None, unet=adapted, lora_dim=args.lora_rank, alpha=args.lora_alpha)
    network.apply_to(None, adapted, apply_text_encoder=False, apply_unet=True)
    network.load_state_dict(random_lora_weights(network.state_dict(), args.lora_alpha))
    network.save_weights(args.lora_out, getattr(torch, args.lora_dtype), {"ss_network_dim": str(args.lora_rank)})
    merge_lora(pipe, args.lora_out, args.lora_weight)


def run_vae(args) -> dict:
    """The original VAE of ``--folder`` on the inputs in ``--inputs``: ``encode`` (posterior mean) of ``encode_input``,
    ``decode`` of ``decode_input``, each on its own; the outputs go to ``--save`` and each failure's last line to the
    result, for `scripts/parity_sweep.py --vae`."""
    import torch
    from safetensors.torch import load_file, save_file

    vae_mod, _, _ = _import_original(args.reference)
    dtype = getattr(torch, args.dtype)
    vae = vae_mod.AutoencoderKLMagvit.from_pretrained(args.folder).eval().to(dtype)
    inputs = load_file(args.inputs)
    outputs, errors = {}, {}
    for name, run in (
        ("encode", lambda x: vae.encode(x).latent_dist.mean),
        ("decode", lambda z: vae.decode(z).sample),
    ):
        try:
            # As predict_i2v.py runs it: the model in `dtype`, under autocast when that is not float32.
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                outputs[f"{name}_output"] = run(inputs[f"{name}_input"].to(dtype)).float().contiguous()
        except Exception as error:  # the sweep compares failures too: which one, not where
            errors[name] = f"{type(error).__name__}: {error}".splitlines()[0][:160]
    save_file(outputs, args.save)
    return {"errors": errors}


def load_transformer(args) -> dict:
    """Times the original's transformer loader as `predict_i2v.py` uses it: `from_pretrained_2d`, then `.to(dtype)`.

    Peak memory is reported above the RSS before loading (imports excluded), like `benchmarks/bench_loading.py`.
    """
    import torch

    _, tr_mod, _ = _import_original(args.reference)
    with open("/proc/self/status") as f:
        before = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    start = time.perf_counter()
    model = tr_mod.HunyuanTransformer3DModel.from_pretrained_2d(
        args.root, subfolder="transformer", transformer_additional_kwargs=TRANSFORMER_EXTRAS
    ).to(getattr(torch, args.dtype))
    seconds = time.perf_counter() - start
    # Only what a loaded model holds, like ours (the original also keeps 40 fixed `t_embed.pe` tables).
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    return {"seconds": seconds, "peak_mb": _peak_rss_mb() - before, "weights_mb": weights}


def fp8_modules(args) -> dict:
    """The module names `predict_i2v.py`'s fp8 rules select on a transformer in the original layout, with its size
    rule (2816**2) replaced by ``--min-numel``: "lite" and "strong" take the modules of class `Linear` exactly whose
    weight has more than ``min_numel`` elements ("strong": at least), "extreme" the parameter-owning leaves except
    embeddings, `LayerNorm`, `Conv2d` and `NonDynamicallyQuantizableLinear`. Nothing is converted."""
    _, tr_mod, _ = _import_original(args.reference)
    model = tr_mod.HunyuanTransformer3DModel.from_pretrained_2d(
        args.root, subfolder="transformer", transformer_additional_kwargs=TRANSFORMER_EXTRAS
    )
    selected = {}
    for mode in ("lite", "strong"):
        limit = args.min_numel - (1 if mode == "strong" else 0)
        selected[mode] = [
            name
            for name, module in model.named_modules()
            if type(module).__name__ == "Linear" and module.weight.numel() > limit
        ]
    skipped_classes = ("Embedding", "LayerNorm", "Conv2d", "NonDynamicallyQuantizableLinear")
    selected["extreme"] = [
        name
        for name, module in model.named_modules()
        if next(module.children(), None) is None
        and next(module.parameters(recurse=False), None) is not None
        and type(module).__name__ not in skipped_classes
    ]
    with open(args.save, "w") as f:
        json.dump(selected, f)
    return {mode: len(names) for mode, names in selected.items()}


def estimate_transformer_memory(args) -> dict:
    """Live tensor bytes of one batched classifier-free-guidance call of the original transformer, per
    `gpu_offload_steps` value (its `hidden_cache_size`), counted like `estimate_memory.py` counts this package's.

    The model is built under `FakeTensorMode` (shapes, no storage) on a fake CUDA device, in `--dtype`, and called as
    `predict_i2v.py` calls it: the pipeline's RoPE tables, the call inputs of `estimate_memory.py`, under
    `torch.autocast` (which torch turns off, with a warning, where there is no CUDA). Only bytes on the CUDA device
    count, so the skips its `.to("cpu")` parks stop counting as they would on a GPU. A fake
    CUDA tensor has no fused attention kernel (SDPA would fall back to the math path and its full attention matrix),
    so attention is replaced by what a fused kernel allocates, its output and a float32 log-sum-exp, as this
    package's estimate counts it with the CPU's flash kernel.
    """
    import torch
    import torch.nn.functional as F
    from diffusers.models.embeddings import get_2d_rotary_pos_embed
    from torch._subclasses.fake_tensor import FakeTensorMode

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _live_bytes import phase_peak
    from estimate_memory import transformer_call_inputs

    _, tr_mod, pipe_mod = _import_original(args.reference)
    with open(args.transformer_config) as f:
        config = json.load(f)
    dtype = getattr(torch, args.dtype)
    frames, height, width = args.latent
    patch = config.get("patch_size", 2)
    grid = (height // patch, width // patch)
    head_dim = config["attention_head_dim"]
    # The pipeline's tables, made outside the fake mode (numpy inside), as the pipeline makes them (on the CPU).
    crops = pipe_mod.get_resize_crop_region_for_grid(grid, 512 // 8 // patch)
    rope = get_2d_rotary_pos_embed(head_dim, crops, grid)

    def fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        log_sum_exp = query.new_empty(query.shape[:-1], dtype=torch.float32)
        del log_sum_exp
        return query.new_empty(*query.shape[:-1], value.shape[-1])

    peaks = {}
    real_sdpa = F.scaled_dot_product_attention
    with FakeTensorMode() as mode:
        model = tr_mod.HunyuanTransformer3DModel.from_config(config, **TRANSFORMER_EXTRAS).eval()
        # `.to("cuda", dtype)`, which fake parameters refuse: every tensor replaced by one of its shape on the device.
        for module in model.modules():
            for tensors in (module._parameters, module._buffers):
                for name, t in tensors.items():
                    if t is not None:
                        moved = torch.empty(t.shape, dtype=dtype if t.is_floating_point() else t.dtype, device="cuda")
                        tensors[name] = (
                            torch.nn.Parameter(moved, False) if isinstance(t, torch.nn.Parameter) else moved
                        )
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        with torch.device("cuda"):  # the same call inputs as this package's estimate, on the (fake) GPU
            inputs = transformer_call_inputs(config, (frames, height, width), dtype, clip_tokens=args.clip_tokens)
        inputs["image_rotary_emb"] = tuple(mode.from_tensor(t) for t in rope)
        F.scaled_dot_product_attention = fused_attention
        try:
            for steps in args.offload_steps:
                model.hidden_cache_size = steps
                with torch.autocast("cuda", dtype=dtype):
                    peaks[str(steps)] = phase_peak(lambda: model(**inputs), device="cuda")
        finally:
            F.scaled_dot_product_attention = real_sdpa
    return {"weights": weights, "peaks": peaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="Path to an IamCreateAI/Ruyi-Models checkout.")
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make-checkpoint")
    mk.add_argument("--out", required=True)
    mk.add_argument("--transformer-config", required=True)
    mk.add_argument("--vae-config", required=True)
    mk.add_argument("--template", required=True, help="Folder to copy image_encoder/, scheduler/, embeddings from.")
    mk.add_argument("--seed", type=int, default=0)
    run = sub.add_parser("run-pipeline")
    run.add_argument("--checkpoint", required=True)
    run.add_argument("--image", required=True, action="append", help="Start frame; repeat for several.")
    run.add_argument("--end-image", action="append", help="End frame; the original handles only one.")
    run.add_argument("--frames", type=int, default=16)
    run.add_argument("--h", type=int, default=64)
    run.add_argument("--w", type=int, default=64)
    run.add_argument("--steps", type=int, default=3)
    run.add_argument("--cfg", type=float, default=7.0)
    run.add_argument("--motion", default="auto")
    run.add_argument("--cam", default="auto")
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--scheduler", default="DDIM", choices=sorted(SCHEDULERS), help="predict_i2v.py's sampler.")
    run.add_argument("--dtype", default="float32")
    run.add_argument("--device", default="cpu")
    run.add_argument("--repeats", type=int, default=1)
    run.add_argument("--warmup", type=int, default=0, help="Untimed calls before the timed ones.")
    run.add_argument("--teacache", action="store_true")
    run.add_argument("--teacache-threshold", type=float, default=0.1)
    run.add_argument("--teacache-skip-start", type=int, default=3)
    run.add_argument("--teacache-skip-end", type=int, default=1)
    run.add_argument("--lora-out", help="Write a random original-format LoRA here and merge it before the run.")
    run.add_argument("--lora-rank", type=int, default=4)
    run.add_argument("--lora-alpha", type=float, default=2.0)
    run.add_argument("--lora-weight", type=float, default=1.0, help="The multiplier merge_lora gets.")
    run.add_argument("--lora-seed", type=int, default=0)
    run.add_argument("--lora-dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    run.add_argument("--offload-steps", type=int, default=None)
    run.add_argument("--time-denoiser", action="store_true", help="Also report the mean transformer call time.")
    run.add_argument("--enhance-a-video", action="store_true")
    run.add_argument("--enhance-weight", type=float, default=1.0)
    run.add_argument("--enhance-skip-start", type=int, default=0)
    run.add_argument("--enhance-skip-end", type=int, default=0)
    run.add_argument("--clip-apply-ratio", type=float, default=0.4)
    run.add_argument("--guidance-rescale", type=float, default=0.0)
    run.add_argument("--save")
    run.add_argument(
        "--posterior-noise-as-package",
        action="store_true",
        help="Draw the VAE posterior noise as diffusers-ruyi does, not from the randomly seeded global RNG.",
    )
    vae = sub.add_parser("run-vae")
    vae.add_argument("--folder", required=True, help="A VAE folder in the original layout (config + weights).")
    vae.add_argument("--inputs", required=True, help="safetensors with `encode_input` and `decode_input`.")
    vae.add_argument("--save", required=True)
    vae.add_argument("--dtype", default="float32")
    load = sub.add_parser("load-transformer")
    load.add_argument("--root", required=True)
    load.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    fp8 = sub.add_parser("fp8-modules")
    fp8.add_argument("--root", required=True, help="A checkpoint in the original layout (its transformer/).")
    fp8.add_argument("--min-numel", type=int, default=2816**2, help="The size rule of lite/strong.")
    fp8.add_argument("--save", required=True, help="JSON file: module names per mode.")
    est = sub.add_parser("estimate-transformer-memory")
    est.add_argument("--transformer-config", required=True, help="The transformer's config.json (original layout).")
    est.add_argument("--latent", type=int, nargs=3, required=True, metavar=("FRAMES", "HEIGHT", "WIDTH"))
    est.add_argument("--clip-tokens", type=int, default=256, help="CLIP patch tokens (ViT-L/14 at 224: 256).")
    est.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    est.add_argument("--offload-steps", type=int, nargs="+", default=[0, 5, 1], help="gpu_offload_steps values.")
    args = parser.parse_args()
    commands = {
        "make-checkpoint": make_checkpoint,
        "fp8-modules": fp8_modules,
        "run-pipeline": run_pipeline,
        "run-vae": run_vae,
        "load-transformer": load_transformer,
        "estimate-transformer-memory": estimate_transformer_memory,
    }
    result = commands[args.command](args)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
