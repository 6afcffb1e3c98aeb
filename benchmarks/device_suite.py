"""One command, one table: the full-size Ruyi-Mini-7B generation on one GPU, every speed/memory variant same-run.

    python benchmarks/device_suite.py --preset full --out OUT_DIR [--reference CHECKOUT --reference-python PY]
    python benchmarks/device_suite.py --preset tiny        # the same code on the CPU in seconds (run by a test)
    python benchmarks/device_suite.py --preset medium      # CPU scale: FLOP count vs measured step time

Everything is built from the published configs (``tests/fixtures/real_checkpoint``) with random weights made where
they run (``--preset full``: bf16, directly on the GPU, nothing downloaded or read from disk). The transformer is built
once and every variant runs on it, then undoes itself (hooks removed, weights re-made), so all rows share the same
weights, image, seed and settings:

* ``baseline``: the pipeline as is, attention through SDPA with the fastest backend measured here (cuDNN / flash /
  efficient on CUDA).
* ``compile``: ``transformer.compile_repeated_blocks(fullgraph=True)`` (compiled during an untimed warm-up call).
* ``teacache``: ``RuyiTeaCacheConfig(threshold=0.10, offload_to_cpu=False)``, the original's quality setting (its
  other defaults), its cache kept on the GPU (the original's default copies it to the CPU and back: same values).
* ``fbc``: diffusers' ``FirstBlockCacheConfig(threshold=--fbc-threshold)``.
* ``teacache_compile``: the two together, the blocks compiled with ``fullgraph=False`` (TeaCache's hooks sit in the
  blocks), warmed up by one whole run.
* ``fp8_lite`` / ``fp8_strong``: the original's fp8 modes (``apply_fp8_mode``; weights stored in float8_e4m3fn and
  computed in bf16).
* ``group_offload``: diffusers group offloading of the transformer (block level, one block per group, CUDA streams),
  the long skips offloaded one by one and the VAE tiled: the documented 12 GB setting. Its "max abs diff" is the
  tiling's (offloading gives the baseline's bits).
* ``model_offload``: ``enable_model_cpu_offload`` plus the long skips offloaded in groups of 5: the original's
  ``predict_i2v.py`` memory setting, so its peak and speed compare with the ``original`` row's. Here and in the
  ``original`` row, s/step and MFU leave out the first transformer call, which moves the weights to the GPU.
* ``vae_decode``: the VAE alone, decoding random latents: at 512x512x24 untiled and with the original's tiling (the
  published config's), and at 768x768x120 with this package's tiling.
* ``original``: the original implementation (``--reference``), built the same way in its own interpreter, with its
  ``predict_i2v.py`` settings (bf16, ``enable_model_cpu_offload``, ``gpu_offload_steps=5``, autocast); it runs second,
  so that the budget never cuts it, and its notes give how much faster ``model_offload`` and ``baseline`` are.

Columns: "s/step" = denoising-loop time / steps; "end-to-end s" = the whole pipeline call (CLIP, VAE encode, loop, VAE
decode); "peak GB" = ``torch.cuda.max_memory_allocated`` during the call; "TFLOP/s" and "MFU" = transformer matmul
FLOPs (`transformer_flops`, from the config and the token count) over the time spent inside the transformer calls,
against the GPU's dense bf16 peak (``--peak-tflops``; 989 for H100/H200) and against a bf16 matmul measured in the
same run; "max abs diff" = largest difference of the frames (in [0, 1]) from ``baseline``.
"""

import argparse
import contextlib
import json
import math
import os
import sys
import time
import zlib
from typing import Any, Dict, List, Optional, Tuple


HERE = os.path.dirname(os.path.abspath(__file__))
# Read by kineto when the profiler starts: detach CUPTI when the profile ends, so the rows timed after it are not
# slowed by its callbacks.
os.environ.setdefault("TEARDOWN_CUPTI", "1")
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)  # diffusers_ruyi from this checkout, installed or not (the GPU machine only has wheels)
REAL = os.path.join(ROOT, "tests", "fixtures", "real_checkpoint")
IMAGE = os.path.join(ROOT, "tests", "fixtures", "golden", "start_only_start.png")

from _bench_common import MEDIUM_TRANSFORMER_OVERRIDES  # noqa: E402
from _worker_protocol import print_result, run_worker  # noqa: E402


# CLIP ViT-L/14 vision tower: its 1024-wide patch tokens are what the published transformer's resampler expects
# (`projection_dim=1024`, 16 queries over 16x16 patches). The published image_encoder config is not in the fixtures.
FULL_CLIP_CONFIG = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    projection_dim=768,
)
# Every preset uses the published VAE layout (slice compression, 3D mid-block attention, its own tiling), so the CPU
# presets run the code paths of the full one. tiny: the tiny published-format golden VAE; medium: narrower widths.
TINY_PUBLISHED_VAE = os.path.join(
    ROOT, "tests", "fixtures", "golden_realfmt", "Ruyi-tiny-realfmt", "vae", "config.json"
)
MEDIUM_VAE_OVERRIDES = {"ch": 32, "ch_mult": [1, 2, 4, 4], "block_out_channels": [32, 64, 128, 128]}

PRESETS: Dict[str, Dict[str, Any]] = {
    # bf16 like the full preset, so a dtype mismatch shows here (on the CPU) rather than on the GPU.
    "tiny": dict(
        device="cpu", dtype="bfloat16", frames=8, height=64, width=64, steps=6, warmup_steps=1,
        vae_cases=[(8, 64, 64, "untiled"), (8, 64, 64, "original"), (8, 64, 64, "tiled")], tile=32,
        compile_backend="eager",
    ),
    "medium": dict(
        device="cpu", dtype="float32", frames=16, height=128, width=128, steps=6, warmup_steps=1,
        vae_cases=[(16, 128, 128, "untiled"), (16, 192, 192, "tiled")], tile=128, compile_backend="eager",
    ),
    "full": dict(
        device="cuda", dtype="bfloat16", frames=24, height=512, width=512, steps=25, warmup_steps=2,
        vae_cases=[(24, 512, 512, "untiled"), (24, 512, 512, "original"), (120, 768, 768, "tiled")], tile=256, compile_backend="inductor",
    ),
}  # fmt: skip
VARIANTS = (
    "baseline", "compile", "teacache", "fbc", "fp8_lite", "fp8_strong", "group_offload", "model_offload",
    "teacache_compile",
)  # fmt: skip
# The variants whose transformer blocks are compiled (warm-up includes compilation; the budget allows for it).
COMPILED_VARIANTS = ("compile", "teacache_compile")
# Everything the suite can run, in its default order: the rows the targets are about come first, so a tight time
# budget cuts the least important ones. The original and the row with its memory settings come right after the
# baseline: every same-run ratio against the original needs them. The profile comes last: a profiler that leaves
# CUPTI attached can slow every CUDA row after it (`TEARDOWN_CUPTI`, set above, asks it not to), and it is cheap
# enough to run in what the budget leaves.
DEFAULT_ORDER = (
    "baseline", "original", "model_offload", "teacache", "compile", "fbc", "fp8_lite", "fp8_strong", "group_offload",
    "vae_decode", "rope", "teacache_compile", "profile",
)  # fmt: skip
COLUMNS = (
    "variant", "s/step", "end-to-end s", "peak GB", "TFLOP/s", "MFU", "MFU vs matmul", "computed steps",
    "max abs diff", "notes",
)  # fmt: skip
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by device-name fragment: the first that the name contains
# (the PCIe and NVL H100s before the SXM one, whose name is plain "H100 80GB HBM3").
SPEC_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200 NVL", 835.0), ("H200", 989.4),
    ("H800", 989.4), ("A100", 312.0),
    ("L40S", 362.0), ("4090", 165.2),
)  # fmt: skip


def spec_peak_tflops(device_name: str) -> Optional[float]:
    """The dense bf16 peak of the GPU called ``device_name`` (`SPEC_PEAK_TFLOPS`), or None when it is not listed."""
    return next((peak for fragment, peak in SPEC_PEAK_TFLOPS if fragment in device_name), None)


# ----------------------------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------------------------


def transformer_flops(config: Dict[str, Any], latent_frames: int, latent_height: int, latent_width: int,
                      batch: int = 2, clip_tokens: Optional[int] = None) -> Dict[str, float]:  # fmt: skip
    """Matmul FLOPs (2 per multiply-add) of one `RuyiTransformer3DModel` forward, by part.

    ``config`` is the diffusers-ruyi transformer config (`convert_transformer_config` of the published one). With
    ``N`` video tokens ``latent_frames * (latent_height / p) * (latent_width / p)``, width ``D``, feed-forward width
    ``F = int(D * mlp_ratio)``, ``T = text_len + text_len_t5`` text tokens of width ``C = cross_attention_dim`` and
    ``Q = n_query`` CLIP tokens, per sample and block:

    * self-attention: ``8 N D^2`` (q, k, v, out) + ``4 N^2 D`` (scores and values over all ``N`` tokens);
    * text cross-attention: ``4 N D^2`` (q, out) + ``4 T C D`` (k, v) + ``4 N T D``;
    * CLIP cross-attention: ``4 N D^2`` + ``4 Q C D`` + ``4 N Q D``, and its gate ``4 N D^2`` (D -> 2D);
    * feed-forward: ``4 N D F``; the long-skip merge ``4 N D^2`` in the ``L/2 - 1`` blocks that have one;
    * timestep shift of norm1: ``2 D^2``.

    Outside the blocks: patch embedding ``2 N (c p^2) D``, output projection ``2 N D (p^2 c_out)``, the T5 text
    projection, the CLIP resampler and the conditioning MLPs. Element-wise work (norms, RoPE, GELU, softmax) is not
    counted. Everything is multiplied by ``batch`` (2 with classifier-free guidance: both branches in one call).

    Returns:
        `Dict[str, float]`: FLOPs per part and ``"total"``.
    """
    p = config["patch_size"]
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    D = heads * head_dim
    F = int(D * config["mlp_ratio"])
    L = config["num_layers"]
    C = config["cross_attention_dim"]
    C5 = config["cross_attention_dim_t5"]
    T = config["text_len"] + config["text_len_t5"]
    T5 = config["text_len_t5"]
    Q = config["n_query"]
    K = clip_tokens if clip_tokens is not None else 256  # CLIP patch tokens entering the resampler
    N = latent_frames * (latent_height // p) * (latent_width // p)
    skip_blocks = L - (L // 2 + 1)
    parts = {
        "self_attention_projections": L * 8 * N * D * D,
        "self_attention_scores_values": L * 4 * N * N * D,
        "text_cross_attention": L * (4 * N * D * D + 4 * T * C * D + 4 * N * T * D),
        "clip_cross_attention": L * (4 * N * D * D + 4 * Q * C * D + 4 * N * Q * D + 4 * N * D * D),
        "feed_forward": L * 4 * N * D * F,
        "long_skips": skip_blocks * 4 * N * D * D,
        "timestep_shift": L * 2 * D * D,
        "patch_embed_and_proj_out": 2 * N * config["in_channels"] * p * p * D
        + 2 * N * D * p * p * config["out_channels"],
        # T5 projection (C5 -> 4 C5 -> C), resampler (kv projection if needed, q/k/v/out, scores/values).
        "conditioning": 2 * T5 * (C5 * 4 * C5 + 4 * C5 * C)
        + (2 * K * config["projection_dim"] * C if config["projection_dim"] != C else 0)
        + 2 * (Q * C * C + 2 * K * C * C + Q * C * C)
        + 4 * Q * K * C
        # Timestep MLP (256 -> D -> D), pooled-text/size MLP (in -> 4D -> D), pooler, norm_out's modulation.
        + 2 * (256 * D + D * D)
        + 2 * ((256 * 6 + D + config["pooled_projection_dim"]) * 4 * D + 4 * D * D)
        + 2 * ((T5 + 1) * 2 * C5 * C5 + C5 * C5 + C5 * config["pooled_projection_dim"])
        + 2 * D * 2 * D,
    }
    flops = {name: float(batch * value) for name, value in parts.items()}
    flops["total"] = sum(flops.values())
    return flops


# ----------------------------------------------------------------------------------------------------------------
# Random weights made where they run
# ----------------------------------------------------------------------------------------------------------------


def init_random_(module, names=None, base_seed: int = 0) -> None:
    """Deterministic random weights, each parameter seeded by its name (so a re-made parameter, or the same name in
    the original implementation, gets the same values on the same device): weights ``N(0, 1/fan_in)``, biases
    ``N(0, 0.02)``, 1-D weights (norms) 1."""
    import torch

    with torch.no_grad():
        for name, param in module.named_parameters():
            if names is not None and name not in names:
                continue
            generator = torch.Generator(device=param.device).manual_seed(base_seed + zlib.crc32(name.encode()))
            if param.ndim >= 2:
                fan_in = math.prod(param.shape[1:])
                param.normal_(0.0, fan_in**-0.5, generator=generator)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.02, generator=generator)
            else:
                param.fill_(1.0)


@contextlib.contextmanager
def default_dtype_and_device(dtype, device):
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def read_config(name: str) -> Dict[str, Any]:
    with open(os.path.join(REAL, name)) as f:
        return json.load(f)


def preset_original_configs(preset: str) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
    """(transformer, VAE, CLIP) configs in the ORIGINAL layout, the VAE always in the published layout."""
    from diffusers_ruyi.tiny import TINY_CLIP_CONFIG, TINY_TRANSFORMER_CONFIG

    if preset == "tiny":
        with open(TINY_PUBLISHED_VAE) as f:
            return dict(TINY_TRANSFORMER_CONFIG), json.load(f), dict(TINY_CLIP_CONFIG)
    if preset == "medium":
        vae = {**read_config("vae_config.json"), **MEDIUM_VAE_OVERRIDES}
        return {**TINY_TRANSFORMER_CONFIG, **MEDIUM_TRANSFORMER_OVERRIDES}, vae, dict(TINY_CLIP_CONFIG)
    return read_config("transformer_config.json"), read_config("vae_config.json"), FULL_CLIP_CONFIG


def build_pipeline(preset: str, dtype, device, vae_dtype):
    """The whole pipeline with random weights, built on ``device`` in ``dtype`` (the VAE in ``vae_dtype``), and the
    (transformer, VAE, CLIP) configs it was built from, in the original layout."""
    import torch
    from diffusers import DDIMScheduler
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from diffusers_ruyi import AutoencoderKLRuyiCausal3D, RuyiImageToVideoPipeline, RuyiTransformer3DModel
    from diffusers_ruyi.loaders.original_checkpoint import (
        clip_image_processor_class,
        convert_transformer_config,
        convert_vae_config,
    )
    from diffusers_ruyi.pipelines.controls import CAMERA_DIRECTIONS, RuyiControlEmbeddings

    transformer_config, vae_config, clip_config = preset_original_configs(preset)
    with default_dtype_and_device(dtype, device):
        transformer = RuyiTransformer3DModel.from_config(convert_transformer_config(transformer_config))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_config))
    with default_dtype_and_device(vae_dtype, device):
        vae = AutoencoderKLRuyiCausal3D.from_config(convert_vae_config(vae_config))
    for model in (transformer, image_encoder, vae):
        init_random_(model)
    size = clip_config["image_size"]
    processor = clip_image_processor_class()(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    scheduler = DDIMScheduler.from_config(read_config("scheduler_config.json"))
    generator = torch.Generator().manual_seed(0)
    flat = {}
    names = ["p.default", "n.default"] + [f"p.16x9movie{m}{c}" for m in range(5) for c in CAMERA_DIRECTIONS]
    for name in names:
        for suffix, length, width in (("1", "text_len", "cross_attention_dim"), ("2", "text_len_t5", "cross_attention_dim_t5")):  # fmt: skip
            shape = (1, transformer_config[length], transformer_config[width])
            flat[f"{name}.emb{suffix}"] = torch.randn(shape, generator=generator)
            flat[f"{name}.mask{suffix}"] = torch.ones(1, transformer_config[length], dtype=torch.long)
    pipe = RuyiImageToVideoPipeline(
        vae=vae,
        transformer=transformer.eval(),
        scheduler=scheduler,
        image_encoder=image_encoder.eval(),
        image_processor=processor,
        control_embeddings=RuyiControlEmbeddings.from_flat_dict(flat),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, (transformer_config, vae_config, clip_config)


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


class Timer:
    """Device-side intervals: CUDA events on CUDA (read once at the end, no sync in the loop), wall clock on CPU."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch

    def mark(self):
        if self.cuda:
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        if self.cuda:
            return start.elapsed_time(end) / 1000.0
        return end - start

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()


class Probe:
    """Hooks that time every transformer call, count the steps where the last block really ran, and mark the end of
    the denoising loop (the pipeline's step-end callback)."""

    def __init__(self, transformer, timer: Timer, count_computed: bool = True):
        self.timer = timer
        self.calls: List[Tuple[Any, Any]] = []
        self.computed = 0
        self.loop_end = None
        self.handles = [
            transformer.register_forward_pre_hook(self._before),
            transformer.register_forward_hook(self._after),
        ]
        if count_computed:
            # Caches replace a skipped block's forward; its feed-forward only runs when the block is computed. Never
            # inside a compiled block: dynamo would trace the hook and guard on the count, recompiling every call.
            self.handles.append(transformer.blocks[-1].ff.register_forward_pre_hook(self._computed))

    def reset(self):
        self.calls, self.computed, self.loop_end = [], 0, None

    def _before(self, module, args):
        self.calls.append((self.timer.mark(), None))

    def _after(self, module, args, output):
        self.calls[-1] = (self.calls[-1][0], self.timer.mark())

    def _computed(self, module, args):
        self.computed += 1

    def callback(self, pipe, step, timestep, kwargs):
        self.loop_end = self.timer.mark()
        return kwargs

    def summary(self, steps: int, skip_first: bool = False) -> Dict[str, float]:
        """Per-step and transformer time. ``skip_first`` leaves the first call (and step) out: with model offload the
        probe's pre-hook runs before accelerate's, so that call includes moving the 14 GB of weights to the GPU.
        (One call per step: the DDIM sampler of every row.)"""
        calls = self.calls[1:] if skip_first and len(self.calls) > 1 else self.calls
        transformer_s = sum(self.timer.seconds(a, b) for a, b in calls)
        loop_s = self.timer.seconds(calls[0][0], self.loop_end)
        summary = {
            "transformer_s": transformer_s,
            "loop_s": loop_s,
            "s_per_step": loop_s / (steps - (len(self.calls) - len(calls))),
            "calls": len(calls),
        }
        if calls is not self.calls:
            summary["first_call_s"] = self.timer.seconds(*self.calls[0])
        return summary

    def remove(self):
        for handle in self.handles:
            handle.remove()


def measure_matmul_tflops(device, dtype) -> float:
    import torch

    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timer = Timer(device)
    for _ in range(3):
        a @ b
    timer.sync()
    start = timer.mark()
    reps = 10 if device.type == "cuda" else 3
    for _ in range(reps):
        a @ b
    end = timer.mark()
    timer.sync()
    return 2 * n**3 * reps / timer.seconds(start, end) / 1e12


# Largest difference from the float32 math backend allowed for a fused backend on unit-normal inputs (bf16 output
# rounding is 2**-8 of values of order 1).
SDPA_TOLERANCE = 3e-2


def attention_shapes(config: Dict[str, Any], tokens: int) -> Dict[str, Tuple[int, int]]:
    """(query, key) lengths of the transformer's attention calls over the video tokens: self-attention, the text
    cross-attention (both encoders' tokens) and the CLIP cross-attention (the resampler's queries)."""
    return {
        "self": (tokens, tokens),
        "text": (tokens, config["text_len"] + config["text_len_t5"]),
        "clip": (tokens, config["n_query"]),
    }


SDPA_BACKENDS = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION")


def pick_sdpa_backend(device, dtype, config, tokens: int, backends=SDPA_BACKENDS) -> Tuple[Any, str]:
    """The fastest of ``backends`` (`SDPBackend` names) for the self-attention shape (CUDA); ``None`` (PyTorch's
    choice) elsewhere. A backend is only a candidate when it runs every attention shape of the model alone and matches
    the math backend there."""
    import torch

    if device.type != "cuda":
        return None, "PyTorch default (CPU)"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]

    def inputs(query_len, key_len):
        # The layout the model hands SDPA: (batch, tokens, heads, head_dim) projections seen as (batch, heads, ...).
        q = torch.randn(2, query_len, heads, head_dim, device=device, dtype=dtype).transpose(1, 2)
        k, v = (torch.randn(2, key_len, heads, head_dim, device=device, dtype=dtype).transpose(1, 2) for _ in "kv")
        return q, k, v

    # Each backend runs every shape in the model's strided layout; only its first sample's first head is compared
    # with a float32 math reference (the reference of the whole self-attention would hold a 4.8 GB score matrix).
    cases = {name: inputs(*lengths) for name, lengths in attention_shapes(config, tokens).items()}
    with sdpa_kernel([SDPBackend.MATH]):
        expected = {
            name: torch.nn.functional.scaled_dot_product_attention(*(t[:1, :1].float() for t in qkv))
            for name, qkv in cases.items()
        }
    timer = Timer(device)
    times, refused = {}, []
    for backend in (getattr(SDPBackend, name) for name in backends):
        try:
            with sdpa_kernel([backend]):
                for name, qkv in cases.items():
                    out = torch.nn.functional.scaled_dot_product_attention(*qkv)
                    error = (out[:1, :1].float() - expected[name]).abs()
                    if not error.max().item() <= SDPA_TOLERANCE:  # NaN too
                        raise RuntimeError(f"{name} attention off by {error.max().item():.3g}")
                q, k, v = cases["self"]
                for _ in range(2):
                    torch.nn.functional.scaled_dot_product_attention(q, k, v)
                timer.sync()
                start = timer.mark()
                for _ in range(5):
                    torch.nn.functional.scaled_dot_product_attention(q, k, v)
                end = timer.mark()
                timer.sync()
            times[backend] = timer.seconds(start, end) / 5
        except RuntimeError as e:
            refused.append(f"{backend.name.lower()}: {str(e).splitlines()[0][:80]}")
            continue
    if not times:
        return None, "PyTorch default (no backend ran every shape alone: " + "; ".join(refused) + ")"
    best = min(times, key=times.get)
    text = ", ".join(f"{b.name.lower()} {t * 1e3:.2f} ms" for b, t in sorted(times.items(), key=lambda kv: kv[1]))
    note = f"SDPA {best.name} (self-attention: {text}"
    return best, note + (f"; not usable: {'; '.join(refused)})" if refused else ")")


def probe_sdpa_backend(args, device, dtype, config, tokens: int) -> Tuple[Any, str]:
    """`pick_sdpa_backend`, on CUDA in a subprocess: a backend that breaks the CUDA context there (an illegal memory
    access) or hangs costs that process, not the run. When the subprocess fails, flash and efficient attention, the
    backends with the longest record at this head size, are picked from in this process instead."""
    if device.type != "cuda":
        return pick_sdpa_backend(device, dtype, config, tokens)
    import tempfile

    from torch.nn.attention import SDPBackend

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sdpa_probe.json")
        with open(path, "w") as f:
            json.dump({"config": config, "tokens": tokens}, f)
        cmd = [
            sys.executable, os.path.abspath(__file__), "--sdpa-probe", "--configs", path, "--device", args.device,
            "--dtype", args.dtype,
        ]  # fmt: skip
        try:
            result = run_worker(cmd, what="SDPA backend probe", timeout=SDPA_PROBE_TIMEOUT_S)
        except RuntimeError as e:
            backend, note = pick_sdpa_backend(device, dtype, config, tokens, backends=SDPA_BACKENDS[1:])
            why = " ".join(str(e).split())[:160]
            return backend, f"{note}; the probe of every backend in a subprocess failed: {why}"
    return (getattr(SDPBackend, result["backend"]) if result["backend"] else None), result["note"]


def sdpa_probe_worker(args) -> None:
    """``--sdpa-probe``: `pick_sdpa_backend` for the model described by ``--configs``, printed as the RESULT."""
    import torch

    with open(args.configs) as f:
        described = json.load(f)
    backend, note = pick_sdpa_backend(
        torch.device(args.device), getattr(torch, args.dtype), described["config"], described["tokens"]
    )
    print_result({"backend": backend.name if backend is not None else None, "note": note})


@contextlib.contextmanager
def sdpa_context(backend):
    if backend is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [backend] + [b for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                                     SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH) if b != backend]  # fmt: skip
    # The chosen backend first; the others stay allowed for the small cross-attentions it may not take.
    with sdpa_kernel(order, set_priority=True):
        yield


# ----------------------------------------------------------------------------------------------------------------
# Variants: each applies itself and returns the function that undoes it
# ----------------------------------------------------------------------------------------------------------------


# Which steps a cache skips depends on how much the trained model's features change from step to step; random weights
# say nothing about that, nor about the quality.
RANDOM_WEIGHTS_CACHE_NOTE = (
    "random weights: the skipped steps are not the trained model's; compare s/step per computed step"
)


def reset_variant_state(pipe, device) -> None:
    """Best effort after a variant failed while applying itself (its undo never came back): every diffusers hook on
    the transformer, accelerate's offload hooks, compiled blocks and the weights' place, so that later rows do not run
    half-offloaded without saying so."""
    import torch
    from diffusers.hooks import HookRegistry

    from diffusers_ruyi.hooks import remove_ruyi_skip_offload

    transformer = pipe.transformer
    with contextlib.suppress(Exception):
        transformer.disable_cache()
    with contextlib.suppress(Exception):
        remove_ruyi_skip_offload(transformer)
    # Every module's registry: a half-applied variant may have hooked the blocks and not yet the model.
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook in list(registry.hooks) if isinstance(registry, HookRegistry) else []:
            with contextlib.suppress(Exception):
                registry.remove_hook(hook, recurse=False)
    for block in transformer.blocks:
        block._compiled_call_impl = None
    torch._dynamo.reset()
    pipe.remove_all_hooks()
    pipe.to(device)


def apply_variant(name: str, pipe, args, device, dtype, inner_dim: int):
    import torch

    transformer = pipe.transformer
    notes: List[str] = []
    if name == "baseline":
        return (lambda: None), notes

    def uncompile():
        for block in transformer.blocks:
            block._compiled_call_impl = None
        torch._dynamo.reset()

    if name == "compile":
        transformer.compile_repeated_blocks(fullgraph=True, backend=args.compile_backend)
        notes.append(f"backend {args.compile_backend}")
        return uncompile, notes
    if name == "teacache":
        from diffusers_ruyi.hooks import RuyiTeaCacheConfig

        # The cached residuals stay on the GPU (`--cache-on-device`): the original's default moves each one to the
        # CPU and back, a blocking copy per cached step that changes no value.
        transformer.enable_cache(RuyiTeaCacheConfig(threshold=args.teacache_threshold, offload_to_cpu=False))
        notes.append(f"threshold {args.teacache_threshold}, skip 3 first / 1 last, cache on the GPU")
        notes.append(RANDOM_WEIGHTS_CACHE_NOTE)
        return transformer.disable_cache, notes
    if name == "teacache_compile":
        # The two together: TeaCache's hooks sit inside the blocks, so dynamo needs graph breaks (fullgraph=False).
        from diffusers_ruyi.hooks import RuyiTeaCacheConfig

        transformer.enable_cache(RuyiTeaCacheConfig(threshold=args.teacache_threshold, offload_to_cpu=False))
        transformer.compile_repeated_blocks(fullgraph=False, backend=args.compile_backend)
        notes.append(
            f"threshold {args.teacache_threshold}, blocks compiled with graph breaks ({args.compile_backend})"
        )

        def undo():
            transformer.disable_cache()
            uncompile()

        return undo, notes
    if name == "fbc":
        from diffusers import FirstBlockCacheConfig

        transformer.enable_cache(FirstBlockCacheConfig(threshold=args.fbc_threshold))
        notes.append(f"threshold {args.fbc_threshold}")
        notes.append(RANDOM_WEIGHTS_CACHE_NOTE)
        return transformer.disable_cache, notes
    if name in ("fp8_lite", "fp8_strong"):
        from diffusers.hooks import HookRegistry

        from diffusers_ruyi.hooks import apply_fp8_mode

        # The size rule scaled to the model width, so small presets convert the same layers as the full model.
        converted = apply_fp8_mode(
            transformer, name[4:], torch.float8_e4m3fn, compute_dtype=dtype, min_numel=inner_dim**2
        )
        notes.append(f"{len(converted)} Linear layers stored in float8_e4m3fn")

        def undo():
            modules = dict(transformer.named_modules())
            for module_name in converted:
                module = modules[module_name]
                registry = HookRegistry.check_if_exists_or_initialize(module)
                # diffusers refuses to undo the cast (precision loss); the weights are re-made below, so skip that.
                registry.get_hook("layerwise_casting").deinitalize_hook = lambda m: m
                registry.remove_hook("layerwise_casting", recurse=False)
                module.to(dtype)
            init_random_(transformer, names={f"{m}.{p}" for m in converted for p, _ in modules[m].named_parameters()})

        return undo, notes
    if name == "group_offload":
        from diffusers.hooks import HookRegistry

        use_stream = device.type == "cuda"
        offload = torch.device("cpu")
        transformer.enable_group_offload(
            onload_device=device,
            offload_device=offload,
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=use_stream,
        )
        from diffusers_ruyi.hooks import RuyiSkipOffloadConfig, apply_ruyi_skip_offload, remove_ruyi_skip_offload

        apply_ruyi_skip_offload(transformer, RuyiSkipOffloadConfig(group_size=1))
        saved_tiling = {k: getattr(pipe.vae, k) for k in ("use_tiling", "tiling_mode") if hasattr(pipe.vae, k)}
        pipe.vae.enable_tiling(tile_sample_min_height=args.tile, tile_sample_min_width=args.tile)
        # The documented 12 GB setting (`ruyi-i2v --offload group --skip-offload 1 --vae-tiling`). Offloading gives
        # the baseline's bits (tested on the CPU); the frames differ by the VAE's tiles (these against the published
        # config's own 384 px ones), which is what "max abs diff" shows here.
        notes.append(
            f"block level, 1 block/group, streams {'on' if use_stream else 'off (CPU)'}, skip offload 1, VAE tiled "
            f"{args.tile}px (max abs diff: the tiling's, offloading is exact)"
        )

        def undo():
            remove_ruyi_skip_offload(transformer)
            registry = HookRegistry.check_if_exists_or_initialize(transformer)
            for hook in ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading"):
                registry.remove_hook(hook, recurse=True)
            transformer.to(device)
            pipe.vae.disable_tiling()
            for key, value in saved_tiling.items():  # back to the published config's own tiling
                setattr(pipe.vae, key, value)

        return undo, notes
    if name == "model_offload":
        # The original's predict_i2v.py setting: each model moves to the GPU when used, so the peak is the
        # transformer plus its activations, never the transformer and the VAE together; and its gpu_offload_steps=5,
        # the long skips parked on the CPU in groups of 5.
        from diffusers_ruyi.hooks import RuyiSkipOffloadConfig, apply_ruyi_skip_offload, remove_ruyi_skip_offload

        pipe.enable_model_cpu_offload(device=device)
        apply_ruyi_skip_offload(transformer, RuyiSkipOffloadConfig(group_size=5))
        notes.append("enable_model_cpu_offload + skip offload group_size=5 (the original's predict_i2v.py setting)")

        def undo():
            remove_ruyi_skip_offload(transformer)
            pipe.remove_all_hooks()
            pipe.to(device)

        return undo, notes
    raise ValueError(f"Unknown variant {name!r}; choose from {VARIANTS}.")


def run_pipeline(pipe, image, args, steps: int, probe: Optional[Probe]):
    import torch

    return pipe(
        image=image,
        num_frames=args.frames,
        height=args.height,
        width=args.width,
        num_inference_steps=steps,
        guidance_scale=7.0,
        motion="2",
        camera_direction="left",
        generator=torch.Generator("cpu").manual_seed(42),
        output_type="pt",
        callback_on_step_end=probe.callback if probe is not None else None,
    ).frames


FIRST_CALL_NOTE = "s/step and MFU leave out the first transformer call, {:.2f} s with the weights' move to the GPU"


def measure_variant(name, pipe, image, args, device, dtype, flops_per_call, peaks, baseline_frames):
    """Applies ``name``, runs one untimed short call (warm-up, compilation) and one timed full call, undoes it."""
    import torch

    timer = Timer(device)
    compiled = name in COMPILED_VARIANTS
    undo = probe = None
    try:
        undo, notes = apply_variant(name, pipe, args, device, dtype, pipe.transformer.inner_dim)
        probe = Probe(pipe.transformer, timer, count_computed=not compiled)
        t0 = time.perf_counter()
        # With TeaCache the compiled blocks meet new hook states (skipping, computing) until a whole run has passed;
        # a short warm-up would leave that compilation inside the timed run.
        run_pipeline(pipe, image, args, args.steps if name == "teacache_compile" else args.warmup_steps, probe)
        timer.sync()
        warmup_s = time.perf_counter() - t0
        probe.reset()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        frames = run_pipeline(pipe, image, args, args.steps, probe)
        timer.sync()
        e2e = time.perf_counter() - t0
        # Read now: undoing a variant (weights back on the GPU, bf16 weights re-made) allocates on its own.
        peak_gb = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
        summary = probe.summary(args.steps, skip_first=name == "model_offload")  # a CUDA-only row
        if name == "teacache_compile":
            from diffusers_ruyi.hooks import get_ruyi_teacache_skipped_steps

            probe.computed = args.steps - len(get_ruyi_teacache_skipped_steps(pipe.transformer))
    finally:
        if probe is not None:
            probe.remove()
        if undo is not None:
            undo()
        else:
            reset_variant_state(pipe, device)
    frames = frames.float().cpu()
    row = {
        "variant": name,
        "s/step": summary["s_per_step"],
        "end-to-end s": e2e,
        "peak GB": peak_gb,
        "computed steps": f"{probe.computed}/{args.steps}",
        "warmup_s": warmup_s,
        "transformer_s": summary["transformer_s"],
        "notes": notes,
    }
    if name not in ("teacache", "fbc", "teacache_compile"):  # with a cache, blocks are skipped: FLOPs would overstate
        tflops = flops_per_call * summary["calls"] / summary["transformer_s"] / 1e12
        row["TFLOP/s"] = tflops
        row["MFU"] = tflops / peaks["spec"] if peaks.get("spec") else None
        row["MFU vs matmul"] = tflops / peaks["matmul"]
    if baseline_frames is not None:
        row["max abs diff"] = (frames - baseline_frames).abs().max().item()
    if compiled:
        notes.append(f"warm-up incl. compile {warmup_s:.1f} s")
    if "first_call_s" in summary:
        notes.append(FIRST_CALL_NOTE.format(summary["first_call_s"]))
    if name == "compile":
        row["computed steps"] = None  # compiled blocks run no module hooks, so the probe cannot count them
    return row, frames


def measure_vae_decode(vae, cases, tile: int, device, dtype) -> List[Dict[str, Any]]:
    """Decodes random latents per case ``(frames, height, width, mode)``; mode is ``"untiled"``, ``"tiled"`` (the
    package's tiler at ``tile`` px) or ``"original"`` (the original's own tiling, as the published config switches
    it on). The VAE's tiling state is restored afterwards."""
    import torch

    rows = []
    timer = Timer(device)
    saved = {k: getattr(vae, k) for k in ("use_tiling", "tiling_mode") if hasattr(vae, k)}
    for frames, height, width, mode in cases:
        label = f"vae_decode {width}x{height}x{frames} " + {"tiled": f"tiled {tile}px"}.get(mode, mode)
        try:
            if mode == "tiled":
                vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile)
            elif mode == "original":
                if not hasattr(vae, "enable_original_tiling"):
                    rows.append({"variant": label, "notes": ["n/a: this VAE has no original tiling"]})
                    continue
                vae.enable_original_tiling()
            else:
                vae.disable_tiling()
            ratio = vae.spatial_compression_ratio
            shape = (1, vae.config.latent_channels, vae.num_latent_frames(frames), height // ratio, width // ratio)
            latents = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)
            with torch.no_grad():
                if device.type == "cuda":
                    torch.cuda.empty_cache()  # before the warm-up, so that the timed decode reuses its blocks
                # Warm-up (kernels, allocator): the lone first latent and three 2-latent chunks, the middle one with
                # context on both sides, cover the decoder's shapes at a fraction of a long decode's cost.
                vae.decode(latents[:, :, : 7 if vae.config.compression_mode == "slice" else 1])
                timer.sync()
                peak_gb = None
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    resident = torch.cuda.memory_allocated()
                t0 = time.perf_counter()
                video = vae.decode(latents).sample
                timer.sync()
                seconds = time.perf_counter() - t0
                if device.type == "cuda":
                    # The VAE's peak as if alone on the GPU: the other models stay resident here, not counted.
                    own = sum(t.numel() * t.element_size() for t in (*vae.parameters(), *vae.buffers(), latents))
                    peak_gb = (torch.cuda.max_memory_allocated() - resident + own) / 1e9
            rows.append({
                "variant": label, "end-to-end s": seconds, "peak GB": peak_gb,
                "notes": [f"{tuple(video.shape)} from latents {tuple(shape)}, {str(dtype).replace('torch.', '')}"]
                + (["peak: VAE weights, latents and decode (the other models resident, not counted)"]
                   if peak_gb is not None else []),
            })  # fmt: skip
            del video, latents
        except Exception as e:
            rows.append({"variant": label, "notes": [f"error: {type(e).__name__}: {str(e)[:200]}"]})
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    vae.disable_tiling()
    for key, value in saved.items():
        setattr(vae, key, value)
    return rows


def _kernel_kind(name: str) -> str:
    lowered = name.lower()
    if any(k in lowered for k in ("flash", "fmha", "attention", "attn", "sdpa")):
        return "attention"
    if any(k in lowered for k in ("gemm", "cutlass", "xmma", "nvjet", "matmul", "cublas", "addmm", "aten::mm", "bmm")):
        return "matmul"
    return "other"


def profile_transformer(pipe, image, args, device, out_dir: Optional[str]) -> Dict[str, Any]:
    """Where one baseline transformer call spends its time: the inputs of a real call are captured during a 1-step
    run, then two calls run under `torch.profiler`; kernels are grouped into attention / matmul / other. The whole
    kernel table goes to ``OUT/profile.txt``."""
    import torch

    captured = {}

    def capture(module, f_args, f_kwargs):
        captured.setdefault("call", (f_args, f_kwargs))

    handle = pipe.transformer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        run_pipeline(pipe, image, args, 1, None)
    finally:
        handle.remove()
    f_args, f_kwargs = captured["call"]
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.no_grad():
        pipe.transformer(*f_args, **f_kwargs)  # warm
        Timer(device).sync()
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(2):
                pipe.transformer(*f_args, **f_kwargs)
            Timer(device).sync()
    events = prof.key_averages()
    use_cuda = device.type == "cuda"

    def self_time(event) -> float:
        return (event.self_device_time_total if use_cuda else event.self_cpu_time_total) or 0.0

    kernels = [e for e in events if self_time(e) > 0 and (not use_cuda or e.device_type.name == "CUDA")]
    total = sum(self_time(e) for e in kernels) or 1.0
    by_kind: Dict[str, float] = {}
    for event in kernels:
        by_kind[_kernel_kind(event.key)] = by_kind.get(_kernel_kind(event.key), 0.0) + self_time(event)
    top = sorted(kernels, key=self_time, reverse=True)[:5]
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        sort_by = "self_cuda_time_total" if use_cuda else "self_cpu_time_total"
        with open(os.path.join(out_dir, "profile.txt"), "w") as f:
            f.write(events.table(sort_by=sort_by, row_limit=40, max_name_column_width=90))
    notes = [
        "per call: " + ", ".join(f"{kind} {100 * t / total:.0f}%" for kind, t in sorted(by_kind.items())),
        f"{total / 2 / 1e3:.1f} ms of kernels per call",
    ]
    notes += [f"{e.key[:60]} {100 * self_time(e) / total:.0f}%" for e in top]
    return {"variant": "profile (1 baseline call)", "notes": notes}


def measure_rope(config: Dict[str, Any], tokens: int, device, dtype) -> Dict[str, Any]:
    """The transformer's inference RoPE against diffusers' `apply_rotary_emb` on one self-attention query of this
    run's shape (`bench_rope.py`): on CUDA it reads half precision directly, which only a GPU can time."""
    import bench_rope

    shape = (2, tokens, config["num_attention_heads"], config["attention_head_dim"])
    timings, equal = bench_rope.measure(shape, dtype, device, repeats=11)
    ours, theirs = timings["diffusers-ruyi"][0], timings["diffusers"][0]
    note = (
        f"one query {shape}: {ours * 1e3:.2f} ms against diffusers' {theirs * 1e3:.2f} ms ({theirs / ours:.2f}x), "
        f"x{4 * config['num_layers']} per call; {'equal bit for bit' if equal else 'OUTPUTS DIFFER'}"
    )
    return {"variant": "rope (one query)", "notes": [note]}


# ----------------------------------------------------------------------------------------------------------------
# The original implementation, in its own interpreter
# ----------------------------------------------------------------------------------------------------------------


def original_worker(args) -> None:
    """Builds the original pipeline with the same random weights (same parameter names, same seeds) on the device
    and runs it with predict_i2v.py's settings. Runs under the original's interpreter (its diffusers 0.31)."""
    import torch
    from diffusers import DDIMScheduler
    from original_driver import TRANSFORMER_EXTRAS, _import_original
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    vae_mod, tr_mod, pipe_mod = _import_original(args.reference)
    from ruyi.utils.utils import get_image_to_video_latent

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    with open(args.configs) as f:
        configs = json.load(f)
    with default_dtype_and_device(dtype, device):
        transformer = tr_mod.HunyuanTransformer3DModel.from_config(configs["transformer"], **TRANSFORMER_EXTRAS)
        vae = vae_mod.AutoencoderKLMagvit.from_config(configs["vae"])
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**configs["clip"]))
    for model in (transformer, vae, encoder):
        init_random_(model)
        model.to(dtype)  # predict_i2v.py casts all three: tensors built as float32 under any default dtype too
    size = configs["clip"]["image_size"]
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    pipe = pipe_mod.RuyiInpaintPipeline(
        vae=vae, transformer=transformer, scheduler=DDIMScheduler.from_config(configs["scheduler"]),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        clip_image_encoder=encoder, clip_image_processor=processor,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    # predict_i2v.py with low_gpu_memory_mode=False. (On the CPU presets a no-op that keeps the hooks' code path.)
    pipe.enable_model_cpu_offload(device=device)
    pipe.transformer.hidden_cache_size = 5  # gpu_offload_steps = 5
    tc = configs["transformer"]
    generator = torch.Generator().manual_seed(0)
    emb = {
        "prompt_embeds": torch.randn(1, tc["text_len"], tc["cross_attention_dim"], generator=generator),
        "prompt_embeds_2": torch.randn(1, tc["text_len_t5"], tc["cross_attention_dim_t5"], generator=generator),
    }
    emb["negative_prompt_embeds"] = torch.randn(emb["prompt_embeds"].shape, generator=generator)
    emb["negative_prompt_embeds_2"] = torch.randn(emb["prompt_embeds_2"].shape, generator=generator)
    for prefix in ("", "negative_"):
        emb[f"{prefix}prompt_attention_mask"] = torch.ones(1, tc["text_len"], dtype=torch.long)
        emb[f"{prefix}prompt_attention_mask_2"] = torch.ones(1, tc["text_len_t5"], dtype=torch.long)
    # As published (embeddings.safetensors): embeddings in bf16, masks int64. The original's latents and scheduler
    # take the embeddings' dtype.
    emb = {k: v.to(device, dtype if v.is_floating_point() else v.dtype) for k, v in emb.items()}
    video, mask, clip_image = get_image_to_video_latent(
        [Image.open(IMAGE).convert("RGB")], None, video_length=args.frames, sample_size=(args.height, args.width)
    )
    pipe.transformer.tea_cache.initialize(False, 0.1, 3, 1, args.steps, True)
    pipe.transformer.enhance_a_video.initialize(False, 1.0, 0, 0, args.steps)

    timer = Timer(device)
    # The package's rows' probe: module hooks, not a replaced `forward`, which would be dropped when diffusers
    # re-attaches the offload hooks at the end of every call (accelerate restores the `forward` from before them).
    probe = Probe(pipe.transformer, timer, count_computed=False)

    def call(steps):
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32):
            return pipe(
                **emb, video_length=args.frames, height=args.height, width=args.width,
                generator=torch.Generator(device).manual_seed(42), guidance_scale=7.0, num_inference_steps=steps,
                video=video, mask_video=mask, clip_image=clip_image,
            ).videos  # fmt: skip

    call(args.warmup_steps)
    timer.sync()
    probe.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    call(args.steps)
    timer.sync()
    e2e = time.perf_counter() - t0
    # As the `model_offload` row: the first call, which moves the weights to the GPU, is left out of the per-step
    # figures (its end-of-loop mark is the last call's end: the original's pipeline takes no step callback).
    probe.loop_end = probe.calls[-1][1]
    summary = probe.summary(args.steps, skip_first=device.type == "cuda")
    print_result({
        "e2e": e2e, "transformer_s": summary["transformer_s"], "calls": summary["calls"],
        "all_calls": len(probe.calls),
        "s_per_step": summary["s_per_step"], "first_call_s": summary.get("first_call_s"),
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None,
    })  # fmt: skip


def measure_original(
    args, configs: Dict[str, Any], flops_per_call: float, peaks, workdir: str, timeout: Optional[float] = None
) -> Dict[str, Any]:
    path = os.path.join(workdir, "original_configs.json")
    with open(path, "w") as f:
        json.dump(configs, f)
    env = dict(os.environ)
    if args.reference_pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.reference_pythonpath, env.get("PYTHONPATH")]))
    cmd = [
        args.reference_python, os.path.abspath(__file__), "--original-worker", "--reference", args.reference,
        "--configs", path, "--device", args.device, "--dtype", args.dtype, "--frames", str(args.frames),
        "--height", str(args.height), "--width", str(args.width), "--steps", str(args.steps),
        "--warmup-steps", str(args.warmup_steps),
    ]  # fmt: skip
    result = run_worker(cmd, env=env, what="original implementation", timeout=timeout)
    tflops = flops_per_call * result["calls"] / result["transformer_s"] / 1e12
    offload = "enable_model_cpu_offload, " if args.device.startswith("cuda") else ""
    notes = [f"its own interpreter; {args.dtype} autocast, {offload}gpu_offload_steps=5"]
    if result.get("first_call_s") is not None:
        notes.append(FIRST_CALL_NOTE.format(result["first_call_s"]))
    return {
        "variant": "original", "s/step": result["s_per_step"], "end-to-end s": result["e2e"],
        "peak GB": result["peak_gb"], "TFLOP/s": tflops, "MFU": tflops / peaks["spec"] if peaks.get("spec") else None,
        "MFU vs matmul": tflops / peaks["matmul"], "computed steps": f"{result['all_calls']}/{args.steps}",
        "notes": notes,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------------------------


def format_cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "notes":
        return "; ".join(value) if value else "-"
    if isinstance(value, str):
        return value
    if column in ("MFU", "MFU vs matmul"):
        return f"{100 * value:.1f}%"
    if column == "max abs diff":
        return f"{value:.2e}"
    if column == "s/step":
        return f"{value:.4f}"
    return f"{value:.2f}"


def format_table(header: str, rows: List[Dict[str, Any]]) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(c, row.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def add_original_ratios(rows: List[Dict[str, Any]]) -> None:
    """On the ``original`` row: how much faster `model_offload` (its same memory settings) and ``baseline`` (all on
    the GPU) are, per step and end to end."""
    orig = next((r for r in rows if r["variant"] == "original" and r.get("s/step")), None)
    if orig is None:
        return
    for name, what in (("model_offload", "same memory settings"), ("baseline", "no offload")):
        row = next((r for r in rows if r["variant"] == name and r.get("s/step")), None)
        if row is not None:
            orig["notes"].insert(0, f"{name} ({what}) is {orig['s/step'] / row['s/step']:.2f}x faster per step, "
                                    f"{orig['end-to-end s'] / row['end-to-end s']:.2f}x end to end")  # fmt: skip


def add_speedups(rows: List[Dict[str, Any]]) -> None:
    base = next((r for r in rows if r["variant"] == "baseline" and "s/step" in r), None)
    if base is None:
        return
    for row in rows:
        if row is not base and row.get("s/step"):
            row.setdefault("notes", []).insert(0, f"{base['s/step'] / row['s/step']:.2f}x baseline per step")


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


class _ReportedRows(list):
    """The table's rows, each also printed (and saved to ``OUT/partial.json`` and ``OUT/table.md``) as soon as it is
    measured, so a run stopped by its time limit still reports what it had."""

    def __init__(self, out_dir: Optional[str]):
        super().__init__()
        self.out_dir = out_dir
        self.header = lambda: "device suite (partial: the run has not finished)"

    def append(self, row: Dict[str, Any]) -> None:
        super().append(row)
        print("ROW " + json.dumps(row, default=str), flush=True)
        self.write()

    def write(self) -> None:
        """Saves the rows so far (and the header: device, versions, FLOPs) to ``OUT``."""
        if self.out_dir:
            os.makedirs(self.out_dir, exist_ok=True)
            with open(os.path.join(self.out_dir, "partial.json"), "w") as f:
                json.dump({"header": self.header(), "rows": list(self)}, f, indent=1, default=str)
            with open(os.path.join(self.out_dir, "table.md"), "w") as f:
                f.write(format_table(self.header(), list(self)) + "\n")

    def __iadd__(self, more):
        for row in more:
            self.append(row)
        return self


# The SDPA probe's subprocess: importing torch, CUDA's start and every backend on every attention shape.
SDPA_PROBE_TIMEOUT_S = 120.0
# Compilation time assumed for a compiled row before the `compile` row has measured it.
COMPILE_ALLOWANCE_S = 90.0
# Per row, what comes on top of a warm-up and a timed generation (seconds, full size, guessed generously): the
# original starts its own interpreter, builds the 7B model again and is about 2x slower; the offload rows move the
# 14 GB of weights (pinned once for group offload, every call for model offload); the VAE rows decode 24 and 120
# frames, the latter tiled. A row still past the budget is stopped there (the original) or skipped.
EXTRA_S = {"original": ("base", 2.0, 60.0), "group_offload": ("base", 0.5, 20.0), "model_offload": ("base", 0.5, 20.0),
           "vae_decode": ("fixed", 0.0, 60.0), "profile": ("fixed", 0.0, 10.0), "rope": ("fixed", 0.0, 5.0)}  # fmt: skip


# A full-size generation's time assumed when the baseline has not been measured: the original's 61 s on an A100.
UNKNOWN_GENERATION_S = 60.0


def expected_seconds(name: str, rows: List[Dict[str, Any]], scale: float = 1.0) -> float:
    """How long row ``name`` will take, from the rows measured so far: a warm-up and a timed generation (twice the
    baseline's end-to-end time), plus the compilation for compiled rows (the ``compile`` row's warm-up once measured)
    and one more generation for ``teacache_compile``, whose warm-up is a whole run, plus `EXTRA_S` (times ``scale``,
    0 on the CPU presets, whose sizes it does not describe). Before the baseline ran (or when it failed) a generation
    is taken to be `UNKNOWN_GENERATION_S`, times ``scale``."""
    base = next((r for r in rows if r["variant"] == "baseline" and "end-to-end s" in r), None)
    if base is None:
        base = {"end-to-end s": UNKNOWN_GENERATION_S * scale}
    kind, factor, extra = EXTRA_S.get(name, ("base", 0.0, 0.0))
    if kind == "fixed":
        return extra * scale
    estimate = (2 + factor) * base["end-to-end s"] + extra * scale
    if name in COMPILED_VARIANTS:
        compiled = next((r for r in rows if r["variant"] == "compile" and "warmup_s" in r), None)
        estimate += compiled["warmup_s"] if compiled else COMPILE_ALLOWANCE_S
    if name == "teacache_compile":
        estimate += base["end-to-end s"]
    return estimate


def run_suite(args) -> Tuple[str, List[Dict[str, Any]]]:
    import tempfile

    import torch
    from PIL import Image

    from diffusers_ruyi.loaders.original_checkpoint import convert_transformer_config

    started = time.perf_counter()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    vae_dtype = getattr(torch, args.vae_dtype) if args.vae_dtype else dtype
    torch.manual_seed(0)
    pipe, (original_transformer_config, original_vae_config, clip_config) = build_pipeline(
        args.preset, dtype, device, vae_dtype
    )
    pipe.to(device)
    build_s = time.perf_counter() - started
    config = convert_transformer_config(original_transformer_config)
    vae = pipe.vae
    ratio = vae.spatial_compression_ratio
    latent = (vae.num_latent_frames(args.frames), args.height // ratio, args.width // ratio)
    tokens = latent[0] * (latent[1] // config["patch_size"]) * (latent[2] // config["patch_size"])
    flops_per_call = transformer_flops(config, *latent, batch=2)["total"]
    peaks = {"matmul": measure_matmul_tflops(device, dtype)}
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peaks["spec"] = args.peak_tflops or spec_peak_tflops(name)
    else:
        name = "CPU"
        peaks["spec"] = args.peak_tflops
    backend, backend_note = probe_sdpa_backend(args, device, dtype, config, tokens)
    image = Image.open(IMAGE).convert("RGB")
    n_params = sum(p.numel() for p in pipe.transformer.parameters())

    def header(final: bool) -> str:
        return (
            f"device suite, preset {args.preset}{'' if final else ' (partial: the run has not finished)'}: {name}, "
            f"torch {torch.__version__}, {args.dtype} (VAE {str(vae_dtype).replace('torch.', '')}), {args.frames}x"
            f"{args.height}x{args.width}, {args.steps} steps, CFG 7 (batch 2), {tokens} video tokens, transformer "
            f"{n_params / 1e9:.3f} B parameters, {flops_per_call / 1e12:.3f} TFLOP per transformer call "
            f"({flops_per_call * args.steps / 1e15:.3f} PFLOP per generation), measured bf16/fp32 matmul "
            f"{peaks['matmul']:.1f} TFLOP/s, spec peak {peaks['spec'] if peaks.get('spec') else 'unknown'} TFLOP/s, "
            f"built in {build_s:.1f} s, suite {time.perf_counter() - started:.0f} s"
        )

    rows: List[Dict[str, Any]] = _ReportedRows(args.out)
    rows.header = lambda: header(final=False)  # in the partial files from now on, so that a killed run keeps it
    rows.write()
    baseline_frames = None
    # The original builds the same models from the same configs, in its own layout.
    base_config = {
        "transformer": original_transformer_config,
        "vae": original_vae_config,
        "clip": clip_config,
        "scheduler": read_config("scheduler_config.json"),
    }

    def over_budget(name_: str) -> bool:
        elapsed = time.perf_counter() - started
        if elapsed + expected_seconds(name_, rows, scale=1.0 if device.type == "cuda" else 0.0) > args.budget_s:
            rows.append({"variant": name_, "notes": [f"skipped: time budget ({elapsed:.0f} s used)"]})
            return True
        return False

    def measure_or_error(name_: str):
        try:
            row, frames = measure_variant(
                name_, pipe, image, args, device, dtype, flops_per_call, peaks, baseline_frames
            )
            return row, frames, None
        except Exception as e:
            return None, None, f"{type(e).__name__}: {str(e)[:300]}"

    # In the order asked for (the default puts what the targets need first), each guarded by the budget.
    for name_ in args.variants:
        if name_ == "original" and not args.reference:
            continue  # no row at all: nothing was asked of the original
        with sdpa_context(backend):
            if over_budget(name_):
                continue
            if name_ == "vae_decode":
                vae_for_rows = pipe.vae
                rows += measure_vae_decode(vae_for_rows, args.vae_cases, args.tile, device, vae_dtype)
                continue
            if name_ in ("profile", "rope"):
                # Rows that measure without a variant; a failure is one row's error, never the end of the run.
                try:
                    if name_ == "profile":
                        rows.append(profile_transformer(pipe, image, args, device, args.out))
                    else:
                        rows.append(measure_rope(config, tokens, device, dtype))
                except Exception as e:
                    rows.append({"variant": name_, "notes": [f"error: {type(e).__name__}: {str(e)[:300]}"]})
                continue
            if name_ == "model_offload" and device.type != "cuda":
                rows.append({"variant": name_, "notes": ["skipped: needs a GPU"]})
                continue
            if name_ == "original":
                try:
                    with tempfile.TemporaryDirectory() as tmp:
                        # Never past the budget, nor more than a minute past its own (generous) estimate: a hung
                        # original would take every row after it.
                        timeout = args.budget_s - (time.perf_counter() - started)
                        if device.type == "cuda":
                            timeout = min(timeout, expected_seconds(name_, rows) + 60)
                        timeout = max(timeout, 1.0)
                        rows.append(measure_original(args, base_config, flops_per_call, peaks, tmp, timeout))
                except Exception as e:
                    rows.append({"variant": "original", "notes": [f"error: {str(e)[-600:]}"]})
                continue
            row, frames, error = measure_or_error(name_)
        if row is None and name_ == "baseline" and backend is not None and "OutOfMemoryError" not in error:
            # The picked backend failed inside the model (a shape its check did not cover): every row would fail the
            # same way, so all of them go back to PyTorch's own choice (outside `sdpa_context`).
            backend, backend_note = None, f"PyTorch default SDPA (the picked backend failed: {error})"
            row, frames, error = measure_or_error(name_)
        if row is None:
            rows.append({"variant": name_, "notes": [f"error: {error}"]})
        else:
            if name_ == "baseline":
                baseline_frames = frames
                row["notes"].insert(0, backend_note)
            rows.append(row)
        if device.type == "cuda":
            try:
                torch.cuda.empty_cache()
            except Exception as e:  # a broken CUDA context: the rows so far are saved, later ones will say why
                rows.append({"variant": f"after {name_}", "notes": [f"error: {type(e).__name__}: {str(e)[:300]}"]})
    add_speedups(rows)
    add_original_ratios(rows)

    return format_table(header(final=True), rows), rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    parser.add_argument("--device", help="Default: the preset's (cuda for full, cpu otherwise).")
    parser.add_argument("--dtype", help="Default: the preset's (bfloat16 for full, float32 otherwise).")
    parser.add_argument("--vae-dtype", help="Default: --dtype (the original runs its VAE in bf16 too).")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_ORDER), choices=list(DEFAULT_ORDER),
                        help="What to run, in this order (default: all, the issue's targets first).")  # fmt: skip
    parser.add_argument("--teacache-threshold", type=float, default=0.10)
    parser.add_argument("--fbc-threshold", type=float, default=0.05)
    parser.add_argument("--compile-backend", help="Default: inductor on CUDA, eager (tracing only) on the CPU.")
    parser.add_argument("--peak-tflops", type=float, help="Dense bf16 peak for MFU (default: by GPU name).")
    parser.add_argument("--budget-s", type=float, default=420.0, help="Skip what would not finish by then.")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--out", help="Folder for table.md and results.json.")
    parser.add_argument("--reference", help="A checkout of the original Ruyi-Models: adds the 'original' row.")
    parser.add_argument("--reference-python", default=sys.executable, help="The original's interpreter.")
    parser.add_argument("--reference-pythonpath", help="Prepended to PYTHONPATH for the original's interpreter.")
    parser.add_argument(
        "--watchdog-s", type=float,
        help="Stop with every thread's traceback after this many seconds (default: --budget-s + 100; 0: never).",
    )  # fmt: skip
    parser.add_argument("--original-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sdpa-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--configs", help=argparse.SUPPRESS)
    for name in ("frames", "height", "width", "warmup-steps"):
        parser.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    for key in ("device", "dtype", "frames", "height", "width", "steps", "warmup_steps", "compile_backend"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.vae_cases, args.tile = preset["vae_cases"], preset["tile"]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.original_worker:
        return original_worker(args)
    if args.sdpa_probe:
        return sdpa_probe_worker(args)
    watchdog = args.budget_s + 100 if args.watchdog_s is None else args.watchdog_s
    if watchdog > 0:
        # Only the original has its own time limit: a hang anywhere else (streams, the compiler, the profiler) would
        # otherwise run to the machine's hard stop. This exits with where every thread was, after the partial files
        # (rows and header) were written row by row.
        import faulthandler

        faulthandler.dump_traceback_later(watchdog, exit=True)
    try:
        table, rows = run_suite(args)
    finally:
        if watchdog > 0:  # called in-process (a notebook), the suite must not stop its caller later
            faulthandler.cancel_dump_traceback_later()
    print(table, flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "table.md"), "w") as f:
            f.write(table + "\n")
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(rows, f, indent=1, default=str)


if __name__ == "__main__":
    main()
