# Copyright 2026 The diffusers-ruyi authors. Ruyi-Mini-7B is by CreateAI (Apache-2.0).
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

import contextlib
import copy
import hashlib
import inspect
import json
import logging as std_logging
import math
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import PIL.Image
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.hooks.faster_cache import _FASTER_CACHE_DENOISER_HOOK
from diffusers.hooks.layerwise_casting import _is_layerwise_casting_active
from diffusers.image_processor import PipelineImageInput
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import CLIPVisionModelWithProjection

from .._images import checked_image_to_rgb
from .._logging import modeling_logs_dropped
from .._validation import (
    MAX_FRAME_SIZE,
    check_attention_kwargs,
    check_bool,
    check_device_available,
    check_frame_size,
    check_int,
    check_real,
    diffusers_hook,
    schedule_problem,
)
from ..loaders.lora import RuyiLoraLoaderMixin
from ..loaders.model_loading import (
    check_no_fp8_storage,
    check_no_lora_layers,
    check_save_arguments,
    remove_stale_shard_indexes,
)
from ..models.autoencoder_kl_ruyi import AutoencoderKLRuyiCausal3D, same_values
from ..models.transformer_ruyi import RuyiTransformer3DModel
from .controls import (
    DEFAULT_NEGATIVE,
    RuyiControlEmbeddings,
    check_base_resolution,
    check_controls_left_at_default,
    control_name,
    get_bucket_size,
)
from .pipeline_output import RuyiPipelineOutput


logger = logging.get_logger(__name__)

# The longest videos Ruyi-Mini-7B was trained on; longer ones run, with a warning.
MAX_TRAINED_FRAMES = 120
# Start (or end) frames per video that Ruyi supports, per its authors (IamCreateAI/Ruyi-Models issue 15).
MAX_KNOWN_FRAMES = 5


def _is_cast_warning(message: str) -> bool:
    """diffusers' "modules ... should be kept in float32" warning, which `ModelMixin.to(dtype)` prints on every cast,
    even for a model that keeps no module in float32 (the VAE): the pipeline's own upcast is not the user's doing and
    has nothing to warn about."""
    return "should be kept in float32" in message


def _posterior_generator(generator: Optional[torch.Generator]) -> Optional[torch.Generator]:
    """A generator of its own for the VAE posterior samples, seeded from `generator`'s current state, which it leaves
    as it is (None: the global RNG).

    The original draws these samples from the global RNG and spends the user's generator only on the initial noise and
    the scheduler's steps. Keeping that order gives a stochastic scheduler (Euler ancestral, DDIM with `eta > 0`) the
    original's noise for a seed, and a seed still fixes every sample. Hashing the state, not reusing it, keeps the two
    streams apart, and a generator used again (a training loop) gives new samples each time.
    """
    if generator is None:
        return None
    digest = hashlib.blake2b(generator.get_state().numpy().tobytes(), digest_size=8).digest()
    return torch.Generator(device=generator.device).manual_seed(int.from_bytes(digest, "little"))


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers.utils import export_to_video, load_image
        >>> from diffusers_ruyi import RuyiImageToVideoPipeline

        >>> # A folder in the original hub layout is converted on the fly; so is a hub id.
        >>> pipe = RuyiImageToVideoPipeline.from_pretrained("IamCreateAI/Ruyi-Mini-7B", dtype=torch.bfloat16)
        >>> pipe.enable_model_cpu_offload()
        >>> pipe.vae.enable_tiling()

        >>> image = load_image("start.jpg")
        >>> video = pipe(image=image, num_frames=48, motion="2", camera_direction="left").frames[0]
        >>> export_to_video(video, "ruyi.mp4", fps=24)
        ```
"""


# What diffusers' `DiffusionPipeline.from_pretrained` reads from its `**kwargs` besides components (diffusers 0.42;
# `dduf_file` gets diffusers' own error). Any other name would be logged as ignored.
DIFFUSERS_LOADING_KWARGS = (
    "cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "torch_dtype", "dtype",
    "custom_pipeline", "custom_revision", "provider", "sess_options", "provider_options", "device_map", "max_memory",
    "offload_folder", "offload_state_dict", "low_cpu_mem_usage", "variant", "use_safetensors", "use_onnx",
    "load_connected_pipeline", "quantization_config", "use_flashpack", "disable_mmap", "trust_remote_code", "dduf_file",
)  # fmt: skip


def _check_offload_device(method: str, gpu_id: Any, device: Any, cpu_ok: bool) -> None:
    """The device an offload method runs each model on, as diffusers works it out (`device`, or its accelerator,
    with `gpu_id` as the index): present on this machine, and the CPU only where ``cpu_ok``. Without either argument,
    or with both naming an index, diffusers' own checks speak."""
    if gpu_id is not None:
        check_int("gpu_id", gpu_id, minimum=0)
    if device is None and gpu_id is None:
        return
    if device is None:
        from diffusers.utils.torch_utils import get_device

        device = get_device()
        if device == "cpu":  # diffusers says there is no accelerator
            return
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise TypeError(f"`device` of `{method}` must be a str, torch.device or int, got {type(device).__name__}.")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"`device` of `{method}` is not a device: {device!r}; pass e.g. 'cuda'.") from None
    if device.type == "meta" or (device.type == "cpu" and not cpu_ok):
        raise ValueError(
            f"`{method}` keeps the weights on the CPU and runs them on an accelerator: `device={str(device)!r}` is "
            "not one; pass e.g. 'cuda'."
        )
    if gpu_id is not None and device.index is not None:
        return  # diffusers refuses both at once, in its words
    index = gpu_id if gpu_id is not None else device.index
    check_device_available("device", torch.device(device.type, index) if index is not None else device)


def _python_number(value: Any) -> Any:
    """A NumPy integer or float as the Python one (the checks take Python numbers); anything else as it is."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


# Arguments of diffusers' text-to-video pipelines that mean a text prompt; Ruyi has none.
_TEXT_PROMPT_ARGUMENTS = ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2")


@contextlib.contextmanager
def _warnings_held_until_valid() -> Iterator[None]:
    """Holds this module's warnings while a call's inputs are checked and logs them (each once) only when the checks
    pass: a refused call says only why it was refused."""
    held = []

    class _Hold(std_logging.Filter):
        def filter(self, record: std_logging.LogRecord) -> bool:
            held.append(record)
            return False

    hold = _Hold()
    logger.addFilter(hold)
    try:
        yield
    finally:
        logger.removeFilter(hold)
    said = set()
    for record in held:  # only reached when the body returned
        if record.getMessage() not in said:
            said.add(record.getMessage())
            logger.handle(record)


def _floor_frame_size(height: Any, width: Any) -> Tuple[Any, Any, Optional[Tuple[int, int]]]:
    """A frame size that is not a multiple of 16, floored to one as the original pipeline floors it, with a warning:
    ``(height, width, resize_to)``, ``resize_to`` the size asked for (None when nothing was floored). A side the
    checks refuse (not an int, above the limit) is passed on to them unchanged; a size below 16 is refused here."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 16:
            raise ValueError(f"`{name}` must be at least 16 (a 16 px multiple, or floored to one), got {value}.")

    def floor(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and 16 <= value <= MAX_FRAME_SIZE:
            return value // 16 * 16
        return value

    floored = (floor(height), floor(width))
    if floored == (height, width):
        return height, width, None
    logger.warning(
        f"`height`x`width` {height}x{width} is not a multiple of 16 (the transformer's 2x2 patches of 8x latents): "
        f"the video is {floored[0]}x{floored[1]}, as in the original, whose frames are resized to {height}x{width} "
        f"and then to {floored[0]}x{floored[1]} by nearest-neighbour sampling (pass multiples of 16 for one resize)."
    )
    return floored[0], floored[1], (height, width)


def _unexpected_call_arguments(kwargs: Dict[str, Any], parameters: Any) -> str:
    """The message for arguments `__call__` does not take: each named, with the nearest spelling it does take (or,
    for a text prompt, what steers Ruyi instead)."""
    import difflib

    known = [
        name for name, parameter in parameters.items() if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    known = [name for name in known if name != "self"]
    notes = []
    for name in sorted(kwargs):
        if name in _TEXT_PROMPT_ARGUMENTS:
            notes.append(
                f"`{name}`: Ruyi takes no text prompt; it is steered by its image(s), `motion` and `camera_direction` "
                "(its text inputs hold the checkpoint's fixed embeddings, replaceable with `prompt_embeds`)"
            )
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        notes.append(f"`{name}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
    return (
        f"RuyiImageToVideoPipeline.__call__() got unexpected keyword argument(s) {sorted(kwargs)}: "
        + "; ".join(notes)
        + "."
    )


def _unsupported_callback(callback: Any) -> Optional[str]:
    """Why one of diffusers' ready-made callbacks in ``callback`` (nested `MultiPipelineCallbacks` included) cannot
    run with this pipeline, or None."""
    from diffusers import callbacks as diffusers_callbacks

    if isinstance(callback, MultiPipelineCallbacks):
        return next(filter(None, (_unsupported_callback(c) for c in callback.callbacks)), None)
    cutoffs = tuple(
        getattr(diffusers_callbacks, name) for name in dir(diffusers_callbacks) if name.endswith("CFGCutoffCallback")
    )
    if isinstance(callback, cutoffs):
        # It cuts the batch to its conditional half, which the CLIP features, masks and inpaint latents (not
        # callback tensors) cannot follow.
        return (
            f"{type(callback).__name__} cuts the batch in half, which this pipeline cannot follow. To end guidance at "
            "a step, use a callback that sets `pipe._guidance_scale = 1.0` there (docs: pipeline)."
        )
    ip_adapter_cutoff = getattr(diffusers_callbacks, "IPAdapterScaleCutoffCallback", ())
    if isinstance(callback, ip_adapter_cutoff):
        return f"{type(callback).__name__} sets an IP-Adapter scale, and this pipeline has no IP-Adapter."
    return None


class RuyiImageToVideoPipeline(DiffusionPipeline, RuyiLoraLoaderMixin):
    r"""
    Image-to-video generation with Ruyi-Mini-7B: a start frame (and optionally an end frame) becomes a video, with
    motion-amplitude and camera-direction control.

    The start (and end) frame is kept as known content of a masked video; its VAE latents and the mask's latents are
    given to the transformer as `inpaint_latents`, CLIP image features of the start frame go to per-block
    cross-attention, and precomputed control embeddings replace the text encoders.

    This model inherits from [`DiffusionPipeline`]. Check the superclass documentation for the generic methods
    (downloading, saving, running on a particular device, offloading, ...).

    Args:
        vae ([`AutoencoderKLRuyiCausal3D`]):
            The causal 3D VAE that encodes the conditioning video and decodes latents into frames.
        transformer ([`RuyiTransformer3DModel`]):
            The diffusion transformer that predicts the velocity (v-prediction) of the video latents.
        scheduler ([`SchedulerMixin`]):
            A scheduler to denoise the latents; Ruyi ships a v-prediction [`DDIMScheduler`]. Euler, Euler
            ancestral, DPM++ and PNDM can be swapped in with `from_config(pipe.scheduler.config)`.
        image_encoder ([`~transformers.CLIPVisionModelWithProjection`]):
            CLIP vision encoder for the start frame.
        image_processor ([`~transformers.CLIPImageProcessor`]):
            Preprocessing for `image_encoder`.
        control_embeddings ([`RuyiControlEmbeddings`]):
            The precomputed motion / camera embeddings.
    """

    model_cpu_offload_seq = "image_encoder->transformer->vae"
    _optional_components = []
    _callback_tensor_inputs = ["latents", "prompt_embeds", "prompt_embeds_2", "inpaint_latents"]
    # The container is tiny and read on the execution device every call; offload hooks would only add copies.
    _exclude_from_cpu_offload = ["control_embeddings"]

    def __init__(
        self,
        vae: AutoencoderKLRuyiCausal3D,
        transformer: RuyiTransformer3DModel,
        scheduler: KarrasDiffusionSchedulers,
        image_encoder: CLIPVisionModelWithProjection,
        image_processor,
        control_embeddings: RuyiControlEmbeddings,
    ):
        super().__init__()
        types = self._get_signature_types()  # the annotations above, as diffusers reads them
        for name, value in (
            ("vae", vae),
            ("transformer", transformer),
            ("image_encoder", image_encoder),
            ("control_embeddings", control_embeddings),
        ):
            (expected,) = types[name]
            model = getattr(value, "_orig_mod", value)  # a `torch.compile`d model is checked as the model it wraps
            if value is not None and not isinstance(model, expected):
                raise TypeError(f"`{name}` must be a {expected.__name__}, got {type(value).__name__}.")
        self._check_components_fit(vae, transformer, image_encoder, control_embeddings)
        self._check_image_processor_fits(image_processor, image_encoder)
        self.register_modules(
            vae=vae,
            transformer=transformer,
            scheduler=scheduler,
            image_encoder=image_encoder,
            image_processor=image_processor,
            control_embeddings=control_embeddings,
        )
        self.vae_scale_factor_spatial = self.vae.spatial_compression_ratio if getattr(self, "vae", None) else 8
        # No `vae_scale_factor_temporal`: the latent frame count follows the VAE's chunks (`vae.num_latent_frames`).
        # Frames are resized with PIL's default filter (bicubic), as the original's `Image.resize((width, height))`.
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial, resample="bicubic")

    @staticmethod
    def _check_image_processor_fits(image_processor, image_encoder) -> None:
        """The CLIP preprocessing must make the images the vision tower takes: positive sizes, and with center
        cropping (the original's) crops of its `image_size`; otherwise the first call fails inside CLIP, after it
        has run (or in PIL, on a negative size)."""
        if image_processor is None:
            return
        sizes = {}
        for name in ("size", "crop_size"):
            value = getattr(image_processor, name, None)
            # transformers 5 keeps them as `SizeDict`s (iterating over their set (key, value) pairs), older versions
            # as dicts; anything else (None, a plain number) the processor reads itself.
            if not isinstance(value, dict) and type(value).__name__ != "SizeDict":
                continue
            value = {k: v for k, v in dict(value).items() if v is not None}
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value.values()):
                raise ValueError(f"The image processor's `{name}` must hold positive integers, got {value}.")
            sizes[name] = value
        image_size = getattr(getattr(image_encoder, "config", None), "image_size", None)
        crop = sizes.get("crop_size")
        if image_size is None or not getattr(image_processor, "do_center_crop", False) or not crop:
            return
        if (crop.get("height"), crop.get("width")) != (image_size, image_size):
            raise ValueError(
                f"The image processor crops to {crop.get('height')}x{crop.get('width')}, but the image encoder takes "
                f"{image_size}x{image_size} images (its config's image_size): they belong to different checkpoints."
            )

    @staticmethod
    def _check_components_fit(vae, transformer, image_encoder, control_embeddings) -> None:
        """The components must be of one checkpoint, or the first call fails deep inside, after the CLIP and VAE
        encodes, on an argument the user never passed: the transformer takes the VAE's latents three times (noise,
        mask, masked video) and predicts them, attends to the CLIP tower's hidden states, and reads the control
        embeddings as its two text streams."""
        if transformer is None:
            return
        config = transformer.config
        if vae is not None:
            latent = vae.config.latent_channels
            if config.in_channels != 3 * latent or config.out_channels < latent:
                raise ValueError(
                    f"The VAE has {latent} latent channels, but the transformer takes in_channels={config.in_channels} "
                    f"and predicts out_channels={config.out_channels} (a VAE of {latent} needs {3 * latent} in, at "
                    f"least {latent} out): they belong to different checkpoints."
                )
        width = getattr(getattr(image_encoder, "config", None), "hidden_size", None)
        if width is not None and width != config.projection_dim:
            raise ValueError(
                f"The image encoder's hidden states are {width} wide, but the transformer attends to CLIP features of "
                f"projection_dim={config.projection_dim}: they belong to different checkpoints."
            )
        if control_embeddings is None:
            return
        emb1, _, emb2, _ = control_embeddings.get(DEFAULT_NEGATIVE)
        expected = ((config.text_len, config.cross_attention_dim), (config.text_len_t5, config.cross_attention_dim_t5))
        found = (tuple(emb1.shape[1:]), tuple(emb2.shape[1:]))
        if found != expected:
            raise ValueError(
                f"The control embeddings (embeddings.safetensors) hold text streams of (tokens, width) {found[0]} and "
                f"{found[1]}, but the transformer takes {expected[0]} and {expected[1]} (text_len, "
                "cross_attention_dim; text_len_t5, cross_attention_dim_t5): they belong to another checkpoint."
            )

    def __setattr__(self, name: str, value: Any):
        if name == "scheduler" and value is not None:
            self._check_scheduler(value)
        super().__setattr__(name, value)

    @staticmethod
    def _check_scheduler(scheduler) -> None:
        # Ruyi predicts the velocity of a DDPM-style (alphas_cumprod) noise schedule. Flow-matching schedulers and
        # epsilon/sample predictions would run without error and return noise.
        prediction_type = getattr(getattr(scheduler, "config", None), "prediction_type", None)
        if not hasattr(scheduler, "alphas_cumprod") or prediction_type != "v_prediction":
            # A flow-matching scheduler may carry a `prediction_type` over from the config it was made from; what it
            # lacks is the DDPM schedule, so say that rather than quote the key.
            why = "no DDPM noise schedule" if not hasattr(scheduler, "alphas_cumprod") else f"{prediction_type=}"
            raise ValueError(
                f"{type(scheduler).__name__} ({why}) cannot run Ruyi, which predicts the "
                "velocity (v-prediction) of a DDPM noise schedule: use a DDPM-family scheduler with "
                "prediction_type='v_prediction', e.g. `EulerDiscreteScheduler.from_config(pipe.scheduler.config)`. "
                "Flow-matching schedulers do not apply."
            )
        name = type(scheduler).__name__
        if "Inverse" in name or getattr(scheduler.config, "use_flow_sigmas", False):
            # An inverse scheduler walks from the video to noise; flow sigmas replace the DDPM schedule. Both run
            # without error and return no video.
            why = "an inverse scheduler" if "Inverse" in name else "use_flow_sigmas=True"
            raise ValueError(
                f"{name} ({why}) cannot run Ruyi's sampling: use a DDPM-family scheduler with prediction_type="
                "'v_prediction' and use_flow_sigmas off, e.g. `EulerDiscreteScheduler.from_config(pipe.scheduler.config)`."
            )
        try:
            signature = inspect.signature(scheduler.step)
        except (AttributeError, TypeError, ValueError):
            return  # no `step`, or a C or wrapped one: nothing to read
        try:
            # What the denoising loop passes (`prepare_extra_step_kwargs` adds eta and generator when step takes them).
            extra = {name: None for name in ("eta", "generator") if name in signature.parameters}
            signature.bind(None, None, None, return_dict=False, **extra)
        except TypeError as e:
            # A scheduler that needs more (CogVideoXDPMScheduler's previous prediction and timestep) would fail after
            # the encoders had run.
            raise ValueError(
                f"{name}.step cannot be called as step(model_output, timestep, sample, return_dict=False), as Ruyi's "
                "denoising loop calls "
                f"it ({e}): use a scheduler whose step needs nothing else, e.g. `DDIMScheduler`, "
                "`EulerDiscreteScheduler`, `DPMSolverMultistepScheduler`."
            ) from None

    # ------------------------------------------------------------------------------------------------------------
    # Loading and saving
    # ------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs):
        r"""
        Loads the pipeline from the PUBLISHED Ruyi checkpoint (original layout), a diffusers-format folder, or a hub id.

        A folder in the original layout (its `model_index.json` names `RuyiInpaintPipeline`, or it has no
        `model_index.json` but `transformer/` + `vae/` + `embeddings.safetensors`) is converted while it is read, the
        files read as the original `predict_i2v.py` does (see the loading docs); its two models load through
        diffusers' own loader, so `device_map` (one device), `quantization_config` (a `PipelineQuantizationConfig`),
        `low_cpu_mem_usage` and `variant` work as for any diffusers pipeline. A hub id is downloaded first (honouring
        `HF_HUB_OFFLINE`, `cache_dir`, `revision`, `token`) and then loaded the same way: its `model_index.json`
        tells the layout; in the original layout only the files loading reads are fetched, less the weights of the
        components passed in; of a diffusers-format repository, the folders of the components its
        `model_index.json` lists (safetensors and configs), less those passed in. A folder written by
        `save_pretrained` loads through [`~DiffusionPipeline.from_pretrained`] with all its arguments.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): A local folder or a hub repository id.
            dtype (`torch.dtype`, `str` or `dict`, *optional*): The weights' dtype (float32, float16 or bfloat16,
                or their names; a dict per component with a `"default"` entry). `torch_dtype` is its alias.
            kwargs: Components to use as they are (`vae=...`) and, for diffusers-format folders, every argument of
                [`~DiffusionPipeline.from_pretrained`].
        """
        from ..loaders.original_checkpoint import (
            HUB_KWARGS,
            check_model_folder,
            check_weight_files,
            is_original_pipeline_folder,
            read_json,
            resolve_dtype,
        )
        from ..loaders.original_pipeline import check_clip_weight_keys, load_original_pipeline_components

        if kwargs.get("use_safetensors") is False:
            # Refused here for every layout: in a diffusers folder the first component read (not a model) would
            # otherwise fail on a missing .bin.
            raise ValueError(
                "`use_safetensors=False`: diffusers-ruyi loads model weights from safetensors files only (the "
                "published image encoder's pytorch_model.bin is the one exception, read without it)."
            )
        dtype = resolve_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
        if isinstance(dtype, dict):
            components, _ = cls._get_signature_keys(cls)
            unknown = sorted(repr(k) for k in dtype if k != "default" and k not in components)
            if unknown:
                raise ValueError(
                    f"`dtype` names no component of the pipeline: {', '.join(unknown)}; use {sorted(components)} or "
                    "'default'."
                )
        # A misspelt option is refused before a download (`subfolder` gets the original layout's own answer).
        cls._check_loading_kwargs(kwargs, allowed=("subfolder",))
        # Where the files come from is settled here (a local folder as it is, a hub id downloaded once); what
        # remains in kwargs is for loading the components.
        hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k != "subfolder" and k in kwargs}
        path = cls._local_snapshot(
            pretrained_model_name_or_path, {k: v for k, v in hub_kwargs.items() if v not in (None, False)}, kwargs
        )

        if is_original_pipeline_folder(path):
            pipe = cls(**load_original_pipeline_components(path, dtype=dtype, **kwargs))
            # What DiffusionPipeline.from_pretrained records (`pipe.name_or_path`).
            pipe.register_to_config(_name_or_path=os.fspath(pretrained_model_name_or_path))
            return pipe
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise ValueError(
                f"{pretrained_model_name_or_path!r} is neither a diffusers pipeline folder (no model_index.json) nor "
                "a Ruyi checkpoint in the original layout (transformer/, vae/, image_encoder/, scheduler/ and "
                "embeddings.safetensors)."
            )
        cls._check_loading_kwargs(kwargs)
        check_weight_files(path)
        # diffusers would read a missing component's folder as the pipeline's root and blame that, after loading
        # the components before it.
        index = read_json(os.path.join(path, "model_index.json"))
        missing = sorted(
            name
            for name, entry in index.items()
            if not name.startswith("_")
            and isinstance(entry, (list, tuple))
            and entry[:1] != [None]
            and name not in kwargs
            and not os.path.isdir(os.path.join(path, name))
        )
        if missing:
            raise FileNotFoundError(
                f"{pretrained_model_name_or_path!r} lacks the folder(s) of {missing}, which its model_index.json lists: "
                "the folder is incomplete (pass those components in, or save the pipeline again)."
            )
        if "image_encoder" not in kwargs and os.path.isdir(os.path.join(path, "image_encoder")):
            # A saved pipeline's CLIP tower is safetensors (the published .bin is the original layout's exception).
            check_model_folder(os.path.join(path, "image_encoder"))
            check_clip_weight_keys(os.path.join(path, "image_encoder"))
        # float32 when not given, as for the original layout: transformers 5 would load the CLIP tower in its file's
        # dtype (a folder saved in bfloat16 gave a bfloat16 image encoder next to float32 models).
        kwargs["dtype"] = torch.float32 if dtype is None else dtype
        return super().from_pretrained(path, **kwargs)

    @classmethod
    def _local_snapshot(
        cls, pretrained_model_name_or_path: Union[str, os.PathLike], hub_kwargs: Dict[str, Any], kwargs: Dict[str, Any]
    ) -> str:
        """The local folder to load: a local path as it is; for a hub id, a snapshot of the files the layout needs
        (``kwargs``: the loading arguments, whose components passed in are not fetched)."""
        from ..loaders.original_checkpoint import (
            ORIGINAL_PIPELINE_CLASS_NAME,
            PICKLE_AND_OTHER_WEIGHT_PATTERNS,
            check_cached_original_snapshot,
            check_local_source,
            diffusers_layout_files,
            diffusers_layout_patterns,
            local_folder,
            original_layout_patterns,
            read_json,
        )

        if check_local_source(pretrained_model_name_or_path):
            return os.fspath(pretrained_model_name_or_path)
        repo_id = os.fspath(pretrained_model_name_or_path)
        # The layout first, from `model_index.json` alone (a repository without one is the original layout's).
        index_folder = local_folder(repo_id, hub_kwargs, allow_patterns=["model_index.json"], command_includes=[])
        index_file = os.path.join(index_folder, "model_index.json")
        index = read_json(index_file) if os.path.isfile(index_file) else {}
        class_name = index.get("_class_name")
        if class_name is None or class_name == ORIGINAL_PIPELINE_CLASS_NAME:
            patterns = original_layout_patterns(kwargs)
            root = local_folder(repo_id, hub_kwargs, allow_patterns=patterns, command_includes=[])
            check_cached_original_snapshot(root, repo_id, hub_kwargs, kwargs)
            return root
        if class_name not in {klass.__name__ for klass in cls.__mro__}:
            # Refused before its weights are downloaded (diffusers would fetch them all, then fail).
            raise ValueError(
                f"{repo_id!r} holds a {class_name!r} pipeline (its model_index.json), not a Ruyi checkpoint: neither "
                f"the original layout ({ORIGINAL_PIPELINE_CLASS_NAME}) nor a saved {cls.__name__}."
            )
        # Not `DiffusionPipeline.download`: it refuses a model_index.json whose components come from a library
        # other than diffusers or transformers (here `diffusers_ruyi`). Its choice of files, one variant's, is kept.
        files = diffusers_layout_files(repo_id, hub_kwargs, index, kwargs, kwargs.get("variant"))
        return local_folder(
            repo_id,
            hub_kwargs,
            allow_patterns=diffusers_layout_patterns(index, kwargs) if files is None else files,
            ignore_patterns=PICKLE_AND_OTHER_WEIGHT_PATTERNS,
            command_includes=[],
        )

    @classmethod
    def _check_loading_kwargs(cls, kwargs: Dict[str, Any], allowed: Tuple[str, ...] = ()) -> None:
        """Refuses keywords `from_pretrained` does not read: diffusers would log "will be ignored" and load without
        them (a misspelt `dtype` loads in float32)."""
        components, optional = cls._get_signature_keys(cls)
        unknown = sorted(set(kwargs) - set(components) - set(optional) - set(DIFFUSERS_LOADING_KWARGS) - set(allowed))
        if unknown:
            raise TypeError(
                f"from_pretrained() got unexpected keyword arguments {unknown}; it takes the components "
                f"{sorted(components)}, `dtype` and diffusers' loading options {sorted(DIFFUSERS_LOADING_KWARGS)}."
            )

    def save_pretrained(self, save_directory: Union[str, os.PathLike], *args, **kwargs) -> None:
        r"""[`~DiffusionPipeline.save_pretrained`], with its arguments checked before anything is written:
        `safe_serialization=False` (pickle weights, which `from_pretrained` refuses to read), a `save_directory` or
        component folder that is a file, a bad `variant` or `max_shard_size`, an unknown keyword argument and
        components carrying LoRA layers (fuse and unload them first) are refused."""
        folders = tuple(name for name, component in self.components.items() if component is not None)
        check_save_arguments(super().save_pretrained, save_directory, *args, folders=folders, **kwargs)
        for name, component in self.components.items():
            check_no_lora_layers(component, name)
            check_no_fp8_storage(component, name)
        super().save_pretrained(save_directory, *args, **kwargs)
        for name in folders:  # (the models remove theirs; the control embeddings are saved by diffusers alone)
            remove_stale_shard_indexes(os.path.join(save_directory, name))

    save_pretrained.__signature__ = inspect.signature(DiffusionPipeline.save_pretrained)

    def to_json_string(self) -> str:
        r"""
        The pipeline's `model_index.json` (what [`~DiffusionPipeline.save_pretrained`] writes and, with
        `push_to_hub=True`, uploads): this package's components are named `["diffusers_ruyi", "<Class>"]` rather than
        by their module path, so saved folders keep loading if the package's files are reorganised.
        """
        index = json.loads(super().to_json_string())
        for key, value in index.items():
            if isinstance(value, list) and len(value) == 2 and str(value[0]).startswith("diffusers_ruyi."):
                index[key] = ["diffusers_ruyi", value[1]]
        return json.dumps(index, indent=2, sort_keys=True) + "\n"

    def enable_model_cpu_offload(self, gpu_id: Optional[int] = None, device: Union[torch.device, str, None] = None):
        r"""[`~DiffusionPipeline.enable_model_cpu_offload`]; an explicit `device` is checked first: one this machine
        does not have is a `ValueError` here, not an error from torch. (`device="cpu"` runs the offload hooks without
        moving anything, as in diffusers.)"""
        _check_offload_device("enable_model_cpu_offload", gpu_id, device, cpu_ok=True)
        super().enable_model_cpu_offload(gpu_id=gpu_id, device=device)

    def enable_sequential_cpu_offload(
        self, gpu_id: Optional[int] = None, device: Union[torch.device, str, None] = None
    ):
        r"""[`~DiffusionPipeline.enable_sequential_cpu_offload`]; an explicit `device` is checked first, as for
        [`~RuyiImageToVideoPipeline.enable_model_cpu_offload`], and may not be the CPU (diffusers took
        `device="cpu"`, and accelerate then failed in the next call)."""
        _check_offload_device("enable_sequential_cpu_offload", gpu_id, device, cpu_ok=False)
        super().enable_sequential_cpu_offload(gpu_id=gpu_id, device=device)

    def maybe_free_model_hooks(self) -> None:
        r"""
        [`~DiffusionPipeline.maybe_free_model_hooks`] (the end of every call): resets the transformer's caches and,
        after `enable_model_cpu_offload`, moves every model back to the CPU through its own offload hook.

        diffusers re-enables the offload instead, and accelerate, re-attaching its hook, restores the model's `forward`
        from when the offload was first enabled: hooks added to the transformer since (a cache, Enhance-A-Video) would
        silently stop running from the next call on. When the hooked models are no longer the pipeline's (a component
        was replaced), diffusers' way re-attaches them.
        """
        hooks = getattr(self, "_all_hooks", None) or []
        hooked = {id(hook.model) for hook in hooks}
        offloaded = {
            id(component)
            for name, component in self.components.items()
            if isinstance(component, torch.nn.Module) and name not in self._exclude_from_cpu_offload
        }
        if not hooks or hooked != offloaded:
            super().maybe_free_model_hooks()
            return
        for component in self.components.values():
            if hasattr(component, "_reset_stateful_cache"):
                component._reset_stateful_cache()
        for hook in hooks:
            hook.offload()

    # ------------------------------------------------------------------------------------------------------------
    # Properties (per-call state)
    # ------------------------------------------------------------------------------------------------------------

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_timestep(self):
        return self._current_timestep

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def attention_kwargs(self) -> Optional[Dict[str, Any]]:
        return self._attention_kwargs

    # ------------------------------------------------------------------------------------------------------------
    # Inputs
    # ------------------------------------------------------------------------------------------------------------

    def _to_pil(self, images, name: str) -> List[PIL.Image.Image]:
        """One image, or a stack of them, as RGB PIL images, through the video processor's converters: a PIL image;
        a numpy array `(H, W, C)` or `(N, H, W, C)`, uint8 or float in [0, 1]; a float tensor `(C, H, W)` or `(N, C,
        H, W)` in [0, 1] (or [-1, 1], which diffusers also accepts, told apart by a negative value). A 2-D array or
        tensor `(H, W)` is one grayscale image (diffusers' `is_valid_image` takes it as one)."""
        if isinstance(images, PIL.Image.Image):
            return [checked_image_to_rgb(images, name)]
        if isinstance(images, torch.Tensor):
            if images.is_meta:
                raise ValueError(f"`{name}` is a tensor on the meta device, which holds no values.")
            if not images.is_floating_point():
                raise TypeError(f"`{name}` as a tensor must be floating point (values in [0, 1]), got {images.dtype}.")
            if images.ndim == 2:
                images = images[None]
            if images.ndim not in (3, 4) or images.shape[-3] not in (1, 3, 4) or not images.numel():
                raise ValueError(
                    f"`{name}` as a tensor must be (C, H, W) or (N, C, H, W) with C 1, 3 or 4, or (H, W) for one "
                    f"grayscale image, no size 0, got {tuple(images.shape)}."
                )
            if not torch.isfinite(images).all():
                raise ValueError(f"`{name}` holds NaN or infinite values.")
            if images.min() < -1 or images.max() > 1:
                raise ValueError(f"`{name}` as a tensor must hold values in [0, 1] (or [-1, 1]).")
            if images.min() < 0:
                images = images / 2 + 0.5
            images = self.video_processor.pt_to_numpy(images.reshape(-1, *images.shape[-3:]))
        elif isinstance(images, np.ndarray):
            if images.ndim == 2:
                images = images[..., None]
            if images.ndim not in (3, 4) or images.shape[-1] not in (1, 3, 4) or not images.size:
                raise ValueError(
                    f"`{name}` as an array must be (H, W, C) or (N, H, W, C) with C 1, 3 or 4, or (H, W) for one "
                    f"grayscale image, no size 0, got {images.shape}."
                )
            if images.dtype == np.uint8:
                images = images.astype(np.float32) / 255
            elif not np.issubdtype(images.dtype, np.floating):
                raise TypeError(f"`{name}` as an array must be uint8 or float in [0, 1], got {images.dtype}.")
            elif not np.isfinite(images).all():
                raise ValueError(f"`{name}` holds NaN or infinite values.")
            elif images.min() < 0 or images.max() > 1:
                raise ValueError(f"`{name}` as a float array must hold values in [0, 1].")
        else:
            raise TypeError(
                f"`{name}` must be a PIL image, a numpy array, a torch tensor or a list of them, got "
                f"{type(images).__name__}. Load files or URLs with `diffusers.utils.load_image`."
            )
        return [image.convert("RGB") for image in self.video_processor.numpy_to_pil(images)]

    def _as_frame_lists(self, images: PipelineImageInput, name: str) -> List[List[PIL.Image.Image]]:
        """`image`/`last_image` as one list of RGB PIL frames per video. One image is one video; a batch (a flat list,
        or an array/tensor with a batch dimension) is one video per image; a list of lists (or of arrays/tensors with a
        batch dimension) gives the frames of each video."""

        def is_stack(x) -> bool:
            return isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 4

        if not isinstance(images, (list, tuple)):
            return [[frame] for frame in self._to_pil(images, name)]
        if len(images) == 0:
            raise TypeError(f"`{name}` must not be an empty list.")
        is_video = [isinstance(entry, (list, tuple)) or is_stack(entry) for entry in images]
        if not any(is_video):
            return [self._to_pil(entry, f"{name}[{k}]") for k, entry in enumerate(images)]
        if not all(is_video):
            raise TypeError(
                f"`{name}` mixes images and lists of images. Give a list of images for a batch (one video each) "
                f"or a list of lists for several frames per video, e.g. `{name}=[[frame_0, frame_1]]` for one video."
            )
        videos = []
        for k, entry in enumerate(images):
            if isinstance(entry, (list, tuple)):
                if len(entry) == 0 or any(isinstance(f, (list, tuple)) or is_stack(f) for f in entry):
                    raise TypeError(
                        f"`{name}[{k}]` must be a non-empty list of images (the frames of video {k}), got "
                        f"{[type(f).__name__ for f in entry] or 'an empty list'}."
                    )
                videos.append([self._to_pil(frame, f"{name}[{k}][{j}]")[0] for j, frame in enumerate(entry)])
            else:
                videos.append(self._to_pil(entry, f"{name}[{k}]"))
        return videos

    def check_num_inference_steps(self, num_inference_steps: int) -> None:
        r"""
        Checks that the pipeline's scheduler can make and run a schedule of `num_inference_steps` steps, as a call
        does before any model runs (a training script's validation steps, say, can be checked before training).

        With Ruyi's scheduler config (`timestep_spacing="leading"`, `steps_offset=1`), DDIM, DDPM and PNDM pass their
        last training timestep at 1,000 steps and DPM++ ends in NaN at 999: the schedule is run once on a copy of
        the scheduler with a one-element sample (milliseconds; the global random state is kept).

        Raises:
            `TypeError` or `ValueError`: naming the number of steps that works.
        """
        self._check_count("num_inference_steps", num_inference_steps)
        try:
            copy.deepcopy(self.scheduler).set_timesteps(num_inference_steps, device="cpu")
        except (ValueError, IndexError) as error:  # PNDM's warm-up, for one, needs at least 4 steps
            train_steps = getattr(self.scheduler.config, "num_train_timesteps", None)
            too_many = isinstance(train_steps, int) and num_inference_steps > train_steps
            raise ValueError(
                f"{type(self.scheduler).__name__} cannot make a schedule of num_inference_steps={num_inference_steps} "
                f"({error}); use {f'at most {train_steps}' if too_many else 'more'} steps."
            ) from error
        problem = schedule_problem(self.scheduler, num_inference_steps)
        if problem is not None:  # it would fail mid-run, or end in NaN
            most = next(
                (n for n in range(num_inference_steps - 1, 0, -1) if schedule_problem(self.scheduler, n) is None), None
            )
            raise ValueError(
                f"{type(self.scheduler).__name__} cannot run num_inference_steps={num_inference_steps} with its config "
                f"(`timestep_spacing`, `steps_offset`): {problem}. "
                + (f"Use at most {most} steps." if most else "Use more steps.")
            )

    def _check_callback_outputs(self, outputs: Any, current: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """What `callback_on_step_end` returned: a dict of tensors to replace, named as in `_callback_tensor_inputs`
        (a misspelt name would be dropped without a word, and `None` fail on the next line), each a finite
        floating-point tensor of the shape of the one it replaces (``current``), finite: another would fail in the
        next step under another argument's name, or turn the video to NaN. Each is cast to the dtype and device of the
        one it replaces, as a `latents` argument is cast (arithmetic with a float32 tensor promotes bfloat16 latents:
        the rest of the call would have run in float32, or failed in the transformer)."""
        if not isinstance(outputs, dict):
            raise TypeError(
                f"`callback_on_step_end` must return a dict (its `callback_kwargs`, changed or not), got "
                f"{type(outputs).__name__}."
            )
        unknown = sorted(set(outputs) - set(self._callback_tensor_inputs))
        if unknown:
            raise ValueError(
                f"`callback_on_step_end` returned {unknown}, which the pipeline does not take; it takes "
                f"{self._callback_tensor_inputs}."
            )
        checked = {}
        for name, value in outputs.items():
            expected = tuple(current[name].shape)
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
                raise TypeError(
                    f"`callback_on_step_end` returned `{name}` as {kind}; it must be a floating-point tensor of "
                    f"shape {expected}."
                )
            if tuple(value.shape) != expected:
                raise ValueError(
                    f"`callback_on_step_end` returned `{name}` of shape {tuple(value.shape)}; it must keep the shape "
                    f"{expected}."
                )
            value = value.to(device=current[name].device, dtype=current[name].dtype)
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"`callback_on_step_end` returned `{name}` holding NaN or infinite values.")
            checked[name] = value
        return checked

    @staticmethod
    def _check_count(name: str, value) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"`{name}` must be a positive integer, got {type(value).__name__} {value!r}.")
        if value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")

    def _check_vae_tiling(self, height: int, width: int, num_frames: int) -> None:
        """The VAE's original tiling at unaligned tile sizes changes output sizes, as the original's does. Refuses
        what the original fails on: latents that would not match the noise, and a grown decode that `smooth_output`
        cannot re-encode to its size. A decode that only grows runs (the VAE warns)."""
        vae = self.vae
        latent_size = vae.tiled_output_size(height, width)
        decoded = vae.tiled_output_size(*latent_size, decode=True)
        smooths = vae.config.compression_mode != "cache" and num_frames > vae.config.num_sample_frames_batch_size
        if latent_size != (height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial):
            problem = f"would encode a {height}x{width} video to {latent_size[0]}x{latent_size[1]} latents"
        elif smooths and vae.tiled_output_size(*vae.tiled_output_size(*decoded), decode=True) != decoded:
            problem = (
                f"decodes a {height}x{width} video to {decoded[0]}x{decoded[1]} px, and `smooth_output` cannot "
                "re-encode that to the same size"
            )
        else:
            return
        raise ValueError(
            f"The VAE's original tiling (tile_sample_min_size={vae.tile_sample_min_size}, tile_overlap_factor="
            f"{vae.original_tile_overlap_factor}) {problem}: at these tile sizes the original's tiles drift against "
            "its crops, and the original fails there too. Use `pipe.vae.enable_tiling()` (the CLI's `--vae-tiling`), "
            "`pipe.vae.enable_original_tiling()` with an aligned size (a multiple of 32 px with overlap 0.25), or "
            "`pipe.vae.disable_tiling()`."
        )

    def _check_custom_embeds(
        self, custom_embeds: Dict[str, torch.Tensor], controls: Tuple[Union[int, str], str, str], batch: int
    ) -> None:
        """Custom embeddings replace the controls: each must be shaped like the control embeddings' own (batch 1 or
        the effective batch), and `motion`/`camera_direction`/`aspect_ratio` left at their defaults."""
        motion, camera_direction, aspect_ratio = controls
        check_controls_left_at_default([motion], [camera_direction], [aspect_ratio])
        # (emb1, mask1, emb2, mask2), the same for the positive and the negative tensors.
        reference = self.control_embeddings.get(DEFAULT_NEGATIVE)
        for k, (name, value) in enumerate(custom_embeds.items()):
            shape = tuple(reference[k % 4].shape[1:])
            if (
                not isinstance(value, torch.Tensor)
                or tuple(value.shape[1:]) != shape
                or value.shape[0] not in (1, batch)
            ):
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"`{name}` must be a tensor of shape (1 or {batch}, {', '.join(map(str, shape))}), like the control "
                    f"embeddings' (see `pipe.control_embeddings.get_controls`), got {got}."
                )
            if k % 2 == 0 and not value.is_floating_point():
                raise TypeError(f"`{name}` must be floating point (embeddings), got {value.dtype}.")
            if k % 2 == 0 and not torch.isfinite(value).all():
                raise ValueError(f"`{name}` holds NaN or infinite values.")

    def check_inputs(
        self,
        images: List[List[PIL.Image.Image]],
        last_images: Optional[List[List[PIL.Image.Image]]],
        num_frames: int,
        height: Optional[int],
        width: Optional[int],
        num_inference_steps: int,
        guidance_scale: float,
        clip_apply_ratio: float,
        num_videos_per_prompt: int,
        generator,
        latents: Optional[torch.Tensor],
        output_type: str,
        latents_dtype: Optional[torch.dtype],
        controls: Tuple[Union[int, str], str, str],
        custom_embeds: Dict[str, Optional[torch.Tensor]],
        callback_on_step_end_tensor_inputs: Optional[List[str]],
        eta: float = 0.0,
        guidance_rescale: float = 0.0,
        original_size: Tuple[int, int] = (1024, 1024),
        crops_coords_top_left: Tuple[int, int] = (0, 0),
        callback_on_step_end: Optional[Callable] = None,
        attention_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Validates every argument before any model runs; raises `ValueError`/`TypeError` naming the argument."""
        if (height is None) != (width is None):
            raise ValueError("Pass both `height` and `width`, or neither (then `base_resolution` picks them).")
        check_frame_size("height", height)
        check_frame_size("width", width)
        for name, value in (
            ("num_inference_steps", num_inference_steps),
            ("num_videos_per_prompt", num_videos_per_prompt),
        ):
            self._check_count(name, value)
        train_steps = getattr(getattr(self.scheduler, "config", None), "num_train_timesteps", None)
        if isinstance(train_steps, int) and num_inference_steps > train_steps:
            # Every sampler, a deliberate departure from diffusers (whose Euler and DPM++ take more): DDIM and PNDM
            # cannot schedule more, and the others would first build a schedule of that many steps (gigabytes for
            # 10^9) that only interpolates between training timesteps.
            raise ValueError(
                f"`num_inference_steps` must be at most the scheduler's `num_train_timesteps` ({train_steps}), got "
                f"{num_inference_steps}."
            )
        if not isinstance(num_frames, int) or isinstance(num_frames, bool):
            raise TypeError(f"`num_frames` must be an integer, got {type(num_frames).__name__}.")
        frames_per_slice = self.vae.config.num_sample_frames_batch_size
        if num_frames != 1 and (num_frames <= 0 or num_frames % frames_per_slice):
            # The slice VAE would encode other counts, but they do not decode back to as many frames, and the
            # original pipeline sizes its latents as `num_frames // 8 * 2`.
            raise ValueError(
                f"`num_frames`={num_frames} is not supported by the VAE: valid frame counts are 1 (an image) or a "
                f"multiple of num_sample_frames_batch_size={frames_per_slice}, as in the original pipeline."
            )
        self._check_vae_tiling(height, width, num_frames)
        if num_frames > MAX_TRAINED_FRAMES:
            logger.warning(
                f"`num_frames`={num_frames} is more than the {MAX_TRAINED_FRAMES} frames Ruyi-Mini-7B was trained on; "
                "the video may lose coherence towards its end."
            )
        if last_images is not None and len(last_images) != len(images):
            raise ValueError(
                f"`last_image` must have as many images as `image` has videos ({len(images)}), got {len(last_images)}. "
                "A flat list is one image per video; give several end frames of one video as a nested list, "
                "`last_image=[[frame_0, frame_1]]`."
            )
        for k, starts in enumerate(images):
            ends = last_images[k] if last_images is not None else []
            for name, frames in (("start frame(s) (`image`)", starts), ("end frame(s) (`last_image`)", ends)):
                if len(frames) > num_frames:  # the original fails to place them
                    raise ValueError(
                        f"`num_frames`={num_frames} is too short for video {k}'s {len(frames)} {name}: they would not "
                        f"all fit. Use `num_frames` >= {len(frames)}."
                    )
            if len(starts) + len(ends) > num_frames:
                # The original places the end frames last, over the start frames they reach: so does this pipeline.
                overlap = len(starts) + len(ends) - num_frames
                logger.warning(
                    f"Video {k}'s {len(starts)} start and {len(ends)} end frame(s) do not fit in `num_frames`="
                    f"{num_frames}: the end frames replace the last {overlap} start frame(s), as in the original "
                    f"(the first start frame stays the CLIP image). Use `num_frames` >= {len(starts) + len(ends)} to "
                    "keep them all."
                )
            if len(starts) > MAX_KNOWN_FRAMES or len(ends) > MAX_KNOWN_FRAMES:
                logger.warning(
                    f"Video {k} has {len(starts)} start and {len(ends)} end frame(s); Ruyi's authors state at most "
                    f"{MAX_KNOWN_FRAMES} of each are supported, so more may give worse results."
                )
        if not isinstance(guidance_scale, (int, float)) or isinstance(guidance_scale, bool):
            raise TypeError(f"`guidance_scale` must be a number, got {type(guidance_scale).__name__}.")
        if not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(
                f"`guidance_scale` must be a finite number >= 0 (1 or below turns guidance off), got {guidance_scale!r}."
            )
        if guidance_scale <= 1 and diffusers_hook(self.transformer, _FASTER_CACHE_DENOISER_HOOK) is not None:
            raise ValueError(
                f"FasterCache (enabled on the transformer) needs classifier-free guidance, `guidance_scale` > 1, got "
                f"{guidance_scale!r}; or call `pipe.transformer.disable_cache()` first."
            )
        check_real(
            "clip_apply_ratio",
            clip_apply_ratio,
            low=0.0,
            high=1.0,
            meaning=" (the fraction of the last steps that see the image)",
        )
        check_real("eta", eta, low=0.0, high=1.0, meaning=" (DDIM's: 0 is deterministic, 1 is DDPM)")
        check_real("guidance_rescale", guidance_rescale, low=0.0, high=1.0, meaning=" (0 is off)")
        # Settings that a call would leave unused: said once, not silently dropped (diffusers' pipelines drop them).
        if eta and "eta" not in inspect.signature(self.scheduler.step).parameters:
            logger.warning(f"`eta`={eta} is ignored: {type(self.scheduler).__name__} takes no eta (DDIM's).")
        if guidance_rescale and guidance_scale <= 1:
            logger.warning(
                f"`guidance_rescale`={guidance_rescale} is ignored: it rescales classifier-free guidance, which "
                f"`guidance_scale`={guidance_scale} (<= 1) turns off."
            )
        for name, value, low in (
            ("original_size", original_size, 1),
            ("crops_coords_top_left", crops_coords_top_left, 0),
        ):
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ValueError(f"`{name}` must be a pair of numbers (height, width)-like, got {value!r}.")
            for item in value:
                check_real(name, item, low=low)
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise TypeError(
                f"`callback_on_step_end` must be callable (a function, PipelineCallback or MultiPipelineCallbacks), "
                f"got {type(callback_on_step_end).__name__}."
            )
        unsupported = _unsupported_callback(callback_on_step_end)
        if unsupported:
            # Refused now, not at their step, halfway through the run.
            raise ValueError(f"`callback_on_step_end`: {unsupported}")
        if callback_on_step_end is not None and callback_on_step_end_tensor_inputs is None:
            raise ValueError("`callback_on_step_end_tensor_inputs` must list the tensors to pass to the callback.")
        check_attention_kwargs(attention_kwargs)
        if attention_kwargs and not getattr(self.transformer, "peft_config", None):
            logger.warning(
                f"`attention_kwargs={attention_kwargs}` scales loaded LoRAs, and the transformer has none: it changes "
                "nothing."
            )
        batch = len(images) * num_videos_per_prompt
        if isinstance(generator, list):
            wrong = [type(g).__name__ for g in generator if not isinstance(g, torch.Generator)]
            if wrong:
                raise TypeError(f"`generator` as a list must hold torch.Generator objects only, got {wrong}.")
            if len(generator) != batch:
                raise ValueError(
                    f"You passed a list of {len(generator)} generators, but the effective batch size is {batch} "
                    f"({len(images)} video(s) in `image` x num_videos_per_prompt={num_videos_per_prompt}); they must match."
                )
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"`generator` must be a torch.Generator or a list of them, got {type(generator).__name__}."
            )
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be one of 'pil', 'np', 'pt', 'latent', got {output_type!r}.")
        if latents_dtype is not None and (
            not isinstance(latents_dtype, torch.dtype) or not latents_dtype.is_floating_point
        ):
            raise TypeError(f"`latents_dtype` must be a floating-point torch.dtype or None, got {latents_dtype!r}.")
        if latents is not None:
            expected = self._latent_shape(batch, num_frames, height, width)
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != expected:
                got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"`latents` must be a tensor of shape {expected}, got {got}.")
            if not latents.is_floating_point():
                raise TypeError(f"`latents` must be a floating-point tensor, got {latents.dtype}.")
            if latents.is_meta:
                raise ValueError("`latents` is a meta tensor (it holds no values).")
            if not torch.isfinite(latents).all():
                raise ValueError("`latents` holds NaN or infinite values.")
        given = {k for k, v in custom_embeds.items() if v is not None}
        control_name(*controls)  # raises a ValueError naming `motion`, `camera_direction` or `aspect_ratio`
        # A component may have been replaced since `__init__`.
        self._check_components_fit(self.vae, self.transformer, self.image_encoder, self.control_embeddings)
        if given and given != set(custom_embeds):
            raise ValueError(
                f"Custom embeddings must be passed all together ({sorted(custom_embeds)}); missing {sorted(set(custom_embeds) - given)}."
            )
        if given:
            self._check_custom_embeds(custom_embeds, controls, batch)
        if callback_on_step_end_tensor_inputs is not None and (
            isinstance(callback_on_step_end_tensor_inputs, str)
            or not hasattr(callback_on_step_end_tensor_inputs, "__iter__")
            or not all(isinstance(k, str) for k in callback_on_step_end_tensor_inputs)
        ):
            raise TypeError(
                "`callback_on_step_end_tensor_inputs` must be a collection (a list, tuple or set) of names from "
                f"{self._callback_tensor_inputs}, got {callback_on_step_end_tensor_inputs!r}."
            )
        if callback_on_step_end_tensor_inputs is not None and not all(
            k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs
        ):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be a subset of {self._callback_tensor_inputs}, got "
                f"{callback_on_step_end_tensor_inputs}."
            )

    # ------------------------------------------------------------------------------------------------------------
    # Conditioning: control embeddings, CLIP features, masked-video latents
    # ------------------------------------------------------------------------------------------------------------

    def encode_prompt(
        self,
        motion: Union[int, str] = "auto",
        camera_direction: str = "auto",
        aspect_ratio: str = "16:9",
        batch_size: int = 1,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        prompt_attention_mask: Optional[torch.Tensor] = None,
        prompt_embeds_2: Optional[torch.Tensor] = None,
        prompt_attention_mask_2: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_attention_mask: Optional[torch.Tensor] = None,
        negative_prompt_embeds_2: Optional[torch.Tensor] = None,
        negative_prompt_attention_mask_2: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, ...]:
        r"""
        The control embeddings, Ruyi's stand-in for a prompt: the motion / camera combination's positive embeddings
        and the negative ones for classifier-free guidance, each repeated to `batch_size`.

        Each of the two token streams comes as embeddings (cast to `dtype`) and an attention mask, as HunyuanDiT's
        two text encoders gave them. Custom embeddings (all eight together) replace `motion` / `camera_direction`.

        Returns:
            `Tuple[torch.Tensor, ...]`: `prompt_embeds, prompt_attention_mask, prompt_embeds_2,
            prompt_attention_mask_2`, then the four negative ones.
        """
        device = device or self._execution_device
        if prompt_embeds is None:
            positive, negative = self.control_embeddings.get_controls(motion, camera_direction, aspect_ratio)
        else:
            positive = (prompt_embeds, prompt_attention_mask, prompt_embeds_2, prompt_attention_mask_2)
            negative = (
                negative_prompt_embeds,
                negative_prompt_attention_mask,
                negative_prompt_embeds_2,
                negative_prompt_attention_mask_2,
            )
        outputs = []
        for k, t in enumerate(positive + negative):
            t = t.to(device=device, dtype=dtype if k % 2 == 0 else None)  # embeddings to `dtype`, masks as they are
            outputs.append(
                t.repeat(batch_size // t.shape[0], *([1] * (t.ndim - 1))) if t.shape[0] != batch_size else t
            )
        return tuple(outputs)

    def encode_image(self, images: List[PIL.Image.Image], device: torch.device) -> torch.Tensor:
        """CLIP features of the start frames: the encoder's last hidden state without the class token."""
        logger.info(f"Encoding {len(images)} start frame(s) with CLIP")
        pixel_values = self.image_processor(images=images, return_tensors="pt").pixel_values
        pixel_values = pixel_values.to(device=device, dtype=self.image_encoder.dtype)
        return self.image_encoder(pixel_values=pixel_values).last_hidden_state[:, 1:]

    def _latent_shape(self, batch_size: int, num_frames: int, height: int, width: int) -> Tuple[int, ...]:
        # The latent frame count follows the VAE's chunking (`num_frames // 8 * 2` for Ruyi's 8-frame chunks), not a
        # plain temporal ratio, so the VAE computes it.
        return (
            batch_size,
            self.vae.config.latent_channels,
            self.vae.num_latent_frames(num_frames),
            height // self.vae_scale_factor_spatial,
            width // self.vae_scale_factor_spatial,
        )

    def prepare_latents(
        self,
        batch_size: int,
        num_frames: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator,
        latents: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The initial noise `(batch_size, 16, latent_frames, height // 8, width // 8)`, scaled by the scheduler."""
        if latents is None:
            shape = self._latent_shape(batch_size, num_frames, height, width)
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    def prepare_conditioning_video(
        self,
        images: List[Union[PIL.Image.Image, List[PIL.Image.Image]]],
        last_images: Optional[List[Union[PIL.Image.Image, List[PIL.Image.Image]]]],
        num_frames: int,
        height: int,
        width: int,
        resize_to: Optional[Tuple[int, int]] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, List[PIL.Image.Image]]:
        r"""
        Builds the known-content video and its mask, as the original `get_image_to_video_latent` does with lists.

        Each video's start frames (an image, or a list of its first frames) become its first frames, and every later
        frame starts as a copy of the first start frame; with end frames, they become the last frames. Every frame is
        resized on its own to `(width, height)` with PIL's default filter, as the original does. The mask is 0 on the
        given frames and 1 on the frames the model generates.

        With ``resize_to`` (the `(height, width)` asked for, when it was floored to multiples of 16 as the original
        floors it), the frames and the CLIP image are first resized to that size with PIL's filter, and the frames
        then to `(height, width)` with nearest-neighbour sampling, as the original's image processor resizes them.

        Returns:
            `Tuple`: the video `(B, 3, F, H, W)` in [-1, 1], the mask `(B, 1, F, H, W)` in {0, 1}, and each video's
            first start frame, resized (the CLIP image).
        """

        def frames_of(entry) -> torch.Tensor:  # (3, frames, H, W) in [-1, 1]
            entry = [entry] if isinstance(entry, PIL.Image.Image) else entry
            entry = [frame.convert("RGB") for frame in entry]
            if resize_to is None:
                return self.video_processor.preprocess(entry, height=height, width=width).transpose(0, 1)
            # Not `preprocess` at `resize_to`: it would floor that size to a multiple of 8 before resizing.
            processor = self.video_processor
            frames = processor.numpy_to_pt(processor.pil_to_numpy([processor.resize(f, *resize_to) for f in entry]))
            frames = torch.nn.functional.interpolate(frames, size=(height, width), mode="nearest")
            return processor.normalize(frames).transpose(0, 1)

        videos, masks, clip_images = [], [], []
        for i, entry in enumerate(images):
            starts = frames_of(entry)
            video = starts[:, :1].repeat(1, num_frames, 1, 1)
            video[:, : starts.shape[1]] = starts
            mask = torch.ones(1, num_frames, height, width)
            mask[:, : starts.shape[1]] = 0
            if last_images is not None:
                ends = frames_of(last_images[i])
                video[:, num_frames - ends.shape[1] :] = ends
                mask[:, num_frames - ends.shape[1] :] = 0
            videos.append(video)
            masks.append(mask)
            first = entry if isinstance(entry, PIL.Image.Image) else entry[0]
            clip_images.append(self.video_processor.resize(first.convert("RGB"), *(resize_to or (height, width))))
        return torch.stack(videos), torch.stack(masks), clip_images

    def prepare_mask_latents(
        self,
        video: torch.Tensor,
        mask: torch.Tensor,
        generator,
        device: torch.device,
        num_videos_per_prompt: int = 1,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""
        Encodes the mask and the masked video with the VAE: the transformer's `inpaint_latents` are the two
        concatenated on the channels. Each comes as `(B * num_videos_per_prompt, 16, f, h, w)`, the videos of one
        input next to each other.

        Masked pixels are set to -1 before encoding; the mask itself is encoded as a 3-channel video in {0, 1}. As in
        the original, each video goes through the VAE on its own (the mask latents of every video first, then the
        masked videos'); a video equal to the one before it (the masks of videos with as many start and end frames)
        reuses its posterior, and the VAE reuses the moments of equal consecutive slices (the masked frames).
        Posterior samples come from a generator seeded from `generator`'s state, never from `generator` itself, which
        the original spends only on the initial noise and the scheduler's steps (without a generator, from the global
        RNG, as in the original). With a list, every output video draws its own from its own generator's, so it gets
        the samples of its single run; with one generator the videos of one input share one sample.

        Returns:
            `Tuple[torch.Tensor, torch.Tensor]`: the mask latents and the masked-video latents.
        """
        mask_video = mask.repeat(1, 3, 1, 1, 1)
        masked_video = video * (mask_video < 0.5) + torch.ones_like(video) * (mask_video > 0.5) * -1
        latents = []
        batch, _, num_frames, height, width = video.shape
        chunk = self.vae.config.num_sample_frames_batch_size
        calls = 2 * batch * self._vae_calls(num_frames, chunk, height, width, decode=False)
        logger.info(f"Encoding {2 * batch} conditioning video(s) of {num_frames} frames with the VAE")
        if isinstance(generator, list):
            generator = [_posterior_generator(g) for g in generator]
        else:
            generator = _posterior_generator(generator)
        with self._vae_upcast(), self._module_progress(self.vae.encoder, calls, "VAE encode"):
            for pixels in (mask_video, masked_video):
                samples, previous = [], None
                for i, one in enumerate(pixels.split(1)):
                    # Videos with as many start and end frames have the same mask: its posterior is reused.
                    if previous is None or not same_values(previous, one):
                        posterior = self.vae.encode(one.to(device=device, dtype=self.vae.dtype)).latent_dist
                    previous = one
                    if isinstance(generator, list):
                        video_generators = generator[i * num_videos_per_prompt : (i + 1) * num_videos_per_prompt]
                        samples += [posterior.sample(generator=g) for g in video_generators]
                    else:
                        samples += [posterior.sample(generator=generator)] * num_videos_per_prompt
                latents.append(torch.cat(samples) * self.vae.config.scaling_factor)
        mask_latents, masked_video_latents = latents
        return mask_latents, masked_video_latents

    def prepare_extra_step_kwargs(self, generator, eta: float) -> Dict[str, Any]:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    # ------------------------------------------------------------------------------------------------------------
    # VAE: dtype policy, progress, decoding
    # ------------------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _vae_upcast(self):
        # diffusers' policy (`force_upcast`): a float16 VAE, which overflows, runs in float32; bfloat16 runs as is,
        # as the original ran the published VAE in the pipeline's dtype.
        upcast = self.vae.dtype == torch.float16 and bool(self.vae.config.force_upcast)
        if upcast and _is_layerwise_casting_active(self.vae):
            # Casting the VAE would undo its layerwise casting's storage dtype for good; that casting's own compute
            # dtype stands instead.
            logger.warning(
                "The float16 VAE has layerwise casting, so it is not upcast to float32 for the call (`force_upcast`): "
                "it computes in the casting's compute dtype, and float16 may overflow in this VAE. Enable the casting "
                "with compute_dtype=torch.float32 (or bfloat16) to avoid that."
            )
            upcast = False
        if upcast:
            with modeling_logs_dropped(_is_cast_warning):
                self.vae.to(torch.float32)
        try:
            yield
        finally:
            if upcast:
                with modeling_logs_dropped(_is_cast_warning):
                    self.vae.to(torch.float16)

    def _offload_until_used(self, model: torch.nn.Module) -> None:
        """Moves ``model`` to the offload device now if `enable_model_cpu_offload` placed it; its hook brings it back
        when it is next called."""
        for hook in getattr(self, "_all_hooks", None) or []:
            if getattr(hook, "model", None) is model:
                hook.offload()

    def _vae_calls(self, frames: int, chunk: int, height: int, width: int, decode: bool) -> int:
        """How often the VAE runs its encoder (or decoder) on one video of `frames` (latent) frames of `height` x
        `width` pixels: once per chunk of `chunk` frames and per tile. Sizes the progress bars."""
        calls = 1 if frames == 1 else math.ceil(frames / chunk)
        return calls * self.vae.num_tiles(height, width, decode=decode)

    @contextlib.contextmanager
    def _module_progress(self, module: torch.nn.Module, total: int, desc: str):
        """A progress bar (diffusers' `progress_bar`, so `set_progress_bar_config` applies) that advances after every
        forward pass of `module`: the VAE runs its encoder and decoder once per chunk of frames and per tile, except
        for encoder chunks it reuses; the bar ends full."""
        config = getattr(self, "_progress_bar_config", {})
        self._progress_bar_config = {**config, "desc": desc}  # this bar's name, whatever `desc` the config sets
        try:
            bar = self.progress_bar(total=total)
        finally:
            self._progress_bar_config = config

        def advance(*_):
            bar.update()  # returns nothing: a forward hook's return value would replace the module's output

        handle = module.register_forward_hook(advance)
        try:
            with bar:
                yield
                # `total` counts every chunk and tile; those equal to the one before are reused, not run again.
                bar.update(total - bar.n)
        finally:
            handle.remove()

    def smooth_output(self, video: torch.Tensor) -> torch.Tensor:
        r"""
        Blends the seams between the slice VAE's independently encoded 8-frame slices, as the original does.

        The middle of the decoded video, shifted by half a slice (`video[:, :, s // 2 : -(s - s // 2)]` for slices
        of `s` frames), is encoded (posterior mode) and decoded again, and averaged with the first decode there, so
        every seam of the first pass falls inside a slice of the second. Videos of at most one slice are returned
        unchanged. The middle of `video` is overwritten in place; the result is returned clamped to [-1, 1] (a new
        tensor).
        """
        frames_per_slice = self.vae.config.num_sample_frames_batch_size
        if video.shape[2] <= frames_per_slice:
            return video
        before = frames_per_slice // 2
        after = frames_per_slice - before
        middle = video[:, :, before:-after]
        latents = self.vae.encode(middle).latent_dist.mode()
        redecoded = self.vae.decode(latents, return_dict=False)[0]
        video[:, :, before:-after] = (middle + redecoded) / 2
        return video.clamp(-1, 1)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        r"""
        Decodes denoised latents into a video `(B, 3, F, H, W)` in [-1, 1], as the original `decode_latents`: the
        VAE decode clamped, then, unless the VAE is the cache variant, `smooth_output`. Runs without gradients (call
        `vae.decode` and `smooth_output` yourself to train through them).
        """
        if not isinstance(latents, torch.Tensor) or latents.dim() != 5:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise TypeError(f"`latents` must be a 5D tensor (batch, channels, frames, height, width), got {shape}.")
        batch, _, num_latent_frames, latent_height, latent_width = latents.shape
        chunk = self.vae.config.num_latent_frames_batch_size
        ratio = self.vae_scale_factor_spatial
        calls = self._vae_calls(num_latent_frames, chunk, latent_height * ratio, latent_width * ratio, decode=True)
        calls *= batch if self.vae.use_slicing else 1
        logger.info(f"Decoding {num_latent_frames} latent frame(s) with the VAE")
        with self._vae_upcast():
            latents = 1 / self.vae.config.scaling_factor * latents.to(self.vae.dtype)
            with self._module_progress(self.vae.decoder, calls, "VAE decode"):
                video = self.vae.decode(latents, return_dict=False)[0].clamp(-1, 1)
            if self.vae.config.compression_mode != "cache":
                video = self.smooth_output(video)
        return video

    # ------------------------------------------------------------------------------------------------------------
    # Long videos and continuation (segments of ordinary calls; see `diffusers_ruyi.long_video`)
    # ------------------------------------------------------------------------------------------------------------

    def generate_long_video(
        self, image: Union[PIL.Image.Image, np.ndarray, torch.Tensor], num_frames: int, **kwargs
    ) -> Union[RuyiPipelineOutput, Tuple]:
        r"""
        Generates a video of any length from a start frame, in segments of at most `segment_frames` (120) frames,
        each continuing the last `context_frames` (5) frames of the one before. See
        [`~diffusers_ruyi.long_video.generate_long_video`] for every argument (per-segment `motion` and
        `camera_direction`, an end frame for the last segment, ...).
        """
        from ..long_video import generate_long_video

        return generate_long_video(self, image, num_frames, **kwargs)

    def extend_video(self, video, num_frames: int, **kwargs) -> Union[RuyiPipelineOutput, Tuple]:
        r"""
        Continues `video` (PIL frames, or an array `(frames, H, W, 3)`) by `num_frames` new frames conditioned on its
        last `context_frames` (5) frames; the result is the input, unchanged, followed by the new frames. See
        [`~diffusers_ruyi.long_video.extend_video`] for every argument.
        """
        from ..long_video import extend_video

        return extend_video(self, video, num_frames, **kwargs)

    # ------------------------------------------------------------------------------------------------------------
    # Call
    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image: PipelineImageInput,
        last_image: Optional[PipelineImageInput] = None,
        num_frames: int = 120,
        height: Optional[int] = None,
        width: Optional[int] = None,
        base_resolution: int = 512,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.0,
        motion: Union[int, str] = "auto",
        camera_direction: str = "auto",
        aspect_ratio: str = "16:9",
        num_videos_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        prompt_attention_mask: Optional[torch.Tensor] = None,
        prompt_embeds_2: Optional[torch.Tensor] = None,
        prompt_attention_mask_2: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_attention_mask: Optional[torch.Tensor] = None,
        negative_prompt_embeds_2: Optional[torch.Tensor] = None,
        negative_prompt_attention_mask_2: Optional[torch.Tensor] = None,
        clip_apply_ratio: float = 0.4,
        guidance_rescale: float = 0.0,
        original_size: Tuple[int, int] = (1024, 1024),
        crops_coords_top_left: Tuple[int, int] = (0, 0),
        latents_dtype: Optional[torch.dtype] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: Optional[Dict[str, Any]] = None,
        callback_on_step_end: Optional[
            Union[Callable[[int, int, Dict], None], PipelineCallback, MultiPipelineCallbacks]
        ] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        **kwargs: Any,
    ) -> Union[RuyiPipelineOutput, Tuple]:
        r"""
        Generates a video from a start frame (and optionally an end frame), or from several first (and last) frames.

        Args:
            image (`PipelineImageInput` or `List[List[...]]`):
                The start frame: a PIL image, a numpy array `(H, W, C)` (uint8, or float in [0, 1]) or a float
                tensor `(C, H, W)` in [0, 1] (or [-1, 1]), as diffusers' image processors take them (a 2-D `(H,
                W)` array or tensor is a grayscale image; a 16-bit grayscale PIL image is scaled to 8 bits; 32-bit
                modes `I` and `F` are refused). A batch (a flat
                list, an array `(N, H, W, C)` or a tensor `(N, C, H, W)`) gives one video per image. A list of lists
                (or of `(N, ...)` arrays/tensors) gives each video several first frames, kept as they are
                (`image=[[f0, f1, f2]]`: one video whose first three frames are `f0, f1, f2`), as the original does
                with a list of start images; this is how a video is continued (see
                [`~RuyiImageToVideoPipeline.extend_video`]). Every frame is resized on its own to `(width, height)`
                with PIL's default (bicubic) filter, as in the original. The first frame of each video is also its
                CLIP image. Ruyi's authors state that up to 5 frames are supported.
            last_image (`PipelineImageInput` or `List[List[...]]`, *optional*):
                The end frame, in the same forms: one per video in a batch, or several last frames per video in a
                list of lists (`last_image=[[e0, e1]]`: the video ends with `e0, e1`). The video then moves from the
                start frames to the end frames.
            num_frames (`int`, defaults to 120):
                Frames to generate: 1 or a multiple of the VAE's encoder chunk (8 for Ruyi). Ruyi was trained on up to
                120; more run, with a warning (`generate_long_video` makes longer videos in segments).
            height (`int`, *optional*):
                Height in pixels, a multiple of 16. With `width`, overrides `base_resolution`. Another size of at
                least 16 is floored to a multiple of 16, with a warning, as in the original: the frames are resized
                to the size asked for, then to the floored one by nearest-neighbour sampling.
            width (`int`, *optional*):
                Width in pixels, a multiple of 16 (or floored to one, as `height`).
            base_resolution (`int`, defaults to 512):
                When `height`/`width` are omitted, the size is the training bucket closest to the image's aspect
                ratio with about `base_resolution ** 2` pixels (384 to 896 work well).
            num_inference_steps (`int`, defaults to 25):
                Denoising steps.
            guidance_scale (`float`, defaults to 7.0):
                Classifier-free guidance scale; guidance is off at 1 or below.
            motion (`int` or `str`, defaults to `"auto"`):
                Motion amplitude, 1 (least) to 4 (most), or `"auto"`.
            camera_direction (`str`, defaults to `"auto"`):
                One of `"static"`, `"left"`, `"right"`, `"up"`, `"down"`, `"auto"`.
            aspect_ratio (`str`, defaults to `"16:9"`):
                The aspect-ratio tag of the control embeddings, a conditioning tag and not the output size: the
                published file has `"16:9"` (what the original uses: "works better") and `"9:16"`; see
                `pipe.control_embeddings.aspect_ratios`. A tag the file lacks falls back to `p.default` with a
                warning, as in the original.
            num_videos_per_prompt (`int`, defaults to 1):
                Videos per input image.
            eta (`float`, defaults to 0.0):
                DDIM's eta, in [0, 1] (0 is deterministic, 1 is DDPM's noise); ignored, with a warning, by other schedulers.
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*):
                Generator(s) for the initial noise (one per video when a list) and the VAE posterior samples.
            latents (`torch.Tensor`, *optional*):
                Initial noise of shape `(batch, 16, latent_frames, height // 8, width // 8)`.
            prompt_embeds, prompt_attention_mask, prompt_embeds_2, prompt_attention_mask_2 (`torch.Tensor`, *optional*):
                Your own positive control embeddings, shaped as `pipe.control_embeddings.get_controls()` returns them
                (batch 1, or one per video); they replace the controls, so `motion`, `camera_direction` and
                `aspect_ratio` must stay at their defaults. All eight custom tensors (with the negatives) must be given
                together.
            negative_prompt_embeds, negative_prompt_attention_mask, negative_prompt_embeds_2, negative_prompt_attention_mask_2 (`torch.Tensor`, *optional*):
                Your own negative embeddings.
            clip_apply_ratio (`float`, defaults to 0.4):
                CLIP image features are used only in the last `clip_apply_ratio` fraction of the steps (zeroed before).
            guidance_rescale (`float`, defaults to 0.0):
                Guidance rescale factor from "Common Diffusion Noise Schedules and Sample Steps are Flawed", in [0, 1]
                (0 is off); it rescales guidance, so with `guidance_scale` <= 1 it is ignored, with a warning.
            original_size (`Tuple[int, int]`, defaults to `(1024, 1024)`):
                HunyuanDiT size conditioning: two finite numbers >= 1.
            crops_coords_top_left (`Tuple[int, int]`, defaults to `(0, 0)`):
                HunyuanDiT crop conditioning: two finite numbers >= 0.
            latents_dtype (`torch.dtype`, *optional*):
                The dtype of the latents through the scheduler; the transformer's dtype by default, as the original.
                `torch.float32` keeps them in float32 with a bfloat16/float16 transformer (which then gets them cast
                to its dtype), as diffusers' Wan does; this changes the results slightly (see the pipeline docs).
            output_type (`str`, defaults to `"pil"`):
                `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict (`bool`, defaults to `True`):
                Return a [`RuyiPipelineOutput`] instead of a tuple.
            attention_kwargs (`dict`, *optional*):
                `{"scale": s}`: a finite number that scales the loaded LoRAs for this call (the only key).
            callback_on_step_end (`Callable`, `PipelineCallback`, or `MultiPipelineCallbacks`, *optional*):
                Called at the end of each step as `callback_on_step_end(self, step, timestep, callback_kwargs)`;
                may return replaced tensors of the same shapes (e.g. `{"latents": ...}`). It may also set
                `pipe._guidance_scale` for the steps after it (as diffusers' CogVideoX pipelines take it): whether the
                negative branch runs is fixed by the call's `guidance_scale`, so a run with guidance can end with
                `1.0` (the conditional prediction alone), and a run without cannot turn it on.
            callback_on_step_end_tensor_inputs (`List[str]`, defaults to `["latents"]`):
                Tensors passed to the callback, a subset of `_callback_tensor_inputs`.
            kwargs:
                None are taken: any other argument is a `TypeError` that names it (a text `prompt` too, which Ruyi
                does not have: it is steered by the image, `motion` and `camera_direction`).

        Examples:

        Returns:
            [`RuyiPipelineOutput`] or `tuple`: the generated frames.
        """
        if kwargs:
            raise TypeError(_unexpected_call_arguments(kwargs, inspect.signature(type(self).__call__).parameters))
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        # NumPy numbers (from `np.arange`, a config read with numpy, ...) mean what Python's do.
        num_frames, height, width, num_inference_steps, num_videos_per_prompt = (
            _python_number(value) for value in (num_frames, height, width, num_inference_steps, num_videos_per_prompt)
        )
        guidance_scale, clip_apply_ratio = _python_number(guidance_scale), _python_number(clip_apply_ratio)

        # 1. Check inputs; raise errors before any model runs. Warnings are said only once they all pass: a refused call says only why.
        with _warnings_held_until_valid():
            missing = [name for name, component in self.components.items() if component is None]  # all are needed
            if missing:
                raise ValueError(f"The pipeline has no {missing}: load or assign them before calling it.")
            images = self._as_frame_lists(image, "image")
            last_images = None if last_image is None else self._as_frame_lists(last_image, "last_image")
            check_base_resolution(base_resolution)  # also when `height` and `width` are given, which leave it unused
            if height is None and width is None:
                height, width = get_bucket_size(images[0][0].height, images[0][0].width, base_resolution)
            height, width, resize_to = _floor_frame_size(height, width)
            custom_embeds = {
                "prompt_embeds": prompt_embeds,
                "prompt_attention_mask": prompt_attention_mask,
                "prompt_embeds_2": prompt_embeds_2,
                "prompt_attention_mask_2": prompt_attention_mask_2,
                "negative_prompt_embeds": negative_prompt_embeds,
                "negative_prompt_attention_mask": negative_prompt_attention_mask,
                "negative_prompt_embeds_2": negative_prompt_embeds_2,
                "negative_prompt_attention_mask_2": negative_prompt_attention_mask_2,
            }
            self.check_inputs(
                images,
                last_images,
                num_frames,
                height,
                width,
                num_inference_steps,
                guidance_scale,
                clip_apply_ratio,
                num_videos_per_prompt,
                generator,
                latents,
                output_type,
                latents_dtype,
                (motion, camera_direction, aspect_ratio),
                custom_embeds,
                callback_on_step_end_tensor_inputs,
                eta=eta,
                guidance_rescale=guidance_rescale,
                original_size=original_size,
                crops_coords_top_left=crops_coords_top_left,
                callback_on_step_end=callback_on_step_end,
                attention_kwargs=attention_kwargs,
            )
        check_bool("return_dict", return_dict)  # a string such as "no" would be truthy
        return_dict = bool(return_dict)

        self._guidance_scale = guidance_scale
        # Whether the negative branch runs is fixed for the call (the batch is doubled once, below); a callback that
        # changes `_guidance_scale` changes the guidance of the later steps, as in diffusers' CogVideoX pipelines.
        do_classifier_free_guidance = self.do_classifier_free_guidance
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        # Caches reset at the end of a call (`maybe_free_model_hooks`); a call that raised (Ctrl-C, out of memory,
        # a callback) never got there, and its counters and cached tensors would leak into this one.
        self.transformer._reset_stateful_cache()

        device = self._execution_device
        transformer_dtype = self.transformer.dtype
        batch_size = len(images) * num_videos_per_prompt

        # 2. Encode the controls (Ruyi's stand-in for a prompt).
        (
            prompt_embeds,
            prompt_attention_mask,
            prompt_embeds_2,
            prompt_attention_mask_2,
            negative_prompt_embeds,
            negative_prompt_attention_mask,
            negative_prompt_embeds_2,
            negative_prompt_attention_mask_2,
        ) = self.encode_prompt(
            motion, camera_direction, aspect_ratio, batch_size, device, transformer_dtype, **custom_embeds
        )
        if do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
            prompt_attention_mask = torch.cat([negative_prompt_attention_mask, prompt_attention_mask])
            prompt_embeds_2 = torch.cat([negative_prompt_embeds_2, prompt_embeds_2])
            prompt_attention_mask_2 = torch.cat([negative_prompt_attention_mask_2, prompt_attention_mask_2])

        # 3. Prepare timesteps.
        self.check_num_inference_steps(num_inference_steps)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)

        # 4. Prepare the initial noise, drawn before the conditioning as in the original, so seeds give its videos.
        # The latents stay in the transformer's dtype through the scheduler, as the original keeps them, unless
        # `latents_dtype` says otherwise: float32 latents (as diffusers' Wan keeps) change bfloat16 results by about
        # as much as bfloat16 itself differs from float32, so the original's choice is the default. The noise is
        # drawn and scaled by `init_noise_sigma` in that dtype too, as the original does: rounded before the scaling,
        # not after (the same values only where the sigma is 1, as with DDIM).
        latents_dtype = latents_dtype or transformer_dtype
        latents = self.prepare_latents(
            batch_size,
            num_frames,
            height,
            width,
            latents_dtype if latents is None else latents.dtype,
            device,
            generator,
            latents,
        ).to(latents_dtype)

        # 5. Encode the start frames (CLIP) and the masked video with its mask (VAE).
        video, mask, clip_images = self.prepare_conditioning_video(
            images, last_images, num_frames, height, width, resize_to=resize_to
        )
        clip_embeds = self.encode_image(clip_images, device).to(transformer_dtype)
        clip_embeds = clip_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
        clip_mask = torch.ones(batch_size, self.transformer.config.n_query, device=device, dtype=transformer_dtype)
        mask_latents, masked_video_latents = self.prepare_mask_latents(
            video, mask, generator, device, num_videos_per_prompt
        )
        inpaint_latents = torch.cat([mask_latents, masked_video_latents], dim=1).to(transformer_dtype)
        # With `enable_model_cpu_offload` the VAE's hook would keep it on the accelerator until the next model in the
        # sequence runs, and the transformer comes before it: through the whole denoising loop.
        self._offload_until_used(self.vae)
        if do_classifier_free_guidance:
            # The negative branch sees no image: zero features and a zero mask.
            clip_embeds = torch.cat([torch.zeros_like(clip_embeds), clip_embeds])
            clip_mask = torch.cat([torch.zeros_like(clip_mask), clip_mask])
            inpaint_latents = torch.cat([inpaint_latents] * 2)
        no_clip_embeds, no_clip_mask = torch.zeros_like(clip_embeds), torch.zeros_like(clip_mask)

        # 6. HunyuanDiT's size and style conditioning, and the scheduler's extra arguments.
        image_meta_size = torch.tensor(
            [list(original_size) + [height, width] + list(crops_coords_top_left)],
            device=device,
            dtype=transformer_dtype,
        ).repeat(inpaint_latents.shape[0], 1)
        style = torch.zeros(inpaint_latents.shape[0], device=device, dtype=torch.long)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        num_channels_latents = self.vae.config.latent_channels

        # 7. Denoising loop.
        # Samplers such as PNDM or Heun take more timesteps than `num_inference_steps`; the bar counts every call.
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                latent_model_input = torch.cat([latents] * 2) if do_classifier_free_guidance else latents
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t).to(transformer_dtype)
                timestep = t.expand(latent_model_input.shape[0]).to(transformer_dtype)
                # CLIP guidance only in the last `clip_apply_ratio` of the steps (layout first, detail later).
                use_clip = i >= len(timesteps) * (1 - clip_apply_ratio)

                # TeaCache and Enhance-A-Video count their windows in `num_inference_steps`, not timesteps, as the
                # original does: with PNDM's extra calls, Enhance-A-Video stops and TeaCache starts over after them.
                with self.transformer.cache_context(
                    "cond_uncond", step_index=i, num_inference_steps=num_inference_steps
                ):
                    noise_pred = self.transformer(
                        latent_model_input,
                        timestep,
                        encoder_hidden_states=prompt_embeds,
                        text_embedding_mask=prompt_attention_mask,
                        encoder_hidden_states_t5=prompt_embeds_2,
                        text_embedding_mask_t5=prompt_attention_mask_2,
                        image_meta_size=image_meta_size,
                        style=style,
                        inpaint_latents=inpaint_latents,
                        clip_encoder_hidden_states=clip_embeds if use_clip else no_clip_embeds,
                        clip_attention_mask=clip_mask if use_clip else no_clip_mask,
                        attention_kwargs=attention_kwargs,
                        return_dict=False,
                    )[0]
                # The second half of the channels is the learned variance, unused by these samplers.
                noise_pred = noise_pred[:, :num_channels_latents].to(latents.dtype)

                if do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_cond = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_cond - noise_pred_uncond)
                    if guidance_rescale > 0.0:
                        noise_pred = rescale_noise_cfg(noise_pred, noise_pred_cond, guidance_rescale=guidance_rescale)

                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:
                        callback_kwargs[k] = locals()[k]
                    scope = locals()  # not inside the comprehension, which has its own scope before Python 3.12
                    current = {k: scope[k] for k in self._callback_tensor_inputs}
                    callback_outputs = self._check_callback_outputs(
                        callback_on_step_end(self, i, t, callback_kwargs), current
                    )
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    prompt_embeds_2 = callback_outputs.pop("prompt_embeds_2", prompt_embeds_2)
                    inpaint_latents = callback_outputs.pop("inpaint_latents", inpaint_latents)

                progress_bar.update()

        self._current_timestep = None

        # 8. Decode.
        if output_type == "latent":
            frames = latents
        else:
            video = self.decode_latents(latents)
            if not torch.isfinite(video).all():  # said once per call: "pil" output would show them as black pixels
                logger.warning(
                    "The decoded video holds NaN or infinite values (a LoRA or Enhance-A-Video weight far too large?); "
                    f"{'they come out as black pixels' if output_type == 'pil' else 'the frames hold them'}."
                )
            if video.dtype != torch.float32:
                # The original maps the video to [0, 1] in the VAE's dtype (bfloat16 in its predict_i2v.py) and only
                # then casts to float32; the same rounding here (the map back to [-1, 1] is exact in float32).
                video = (video / 2 + 0.5).clamp(0, 1).float() * 2 - 1
            frames = self.video_processor.postprocess_video(video.float(), output_type=output_type)

        self.maybe_free_model_hooks()

        if not return_dict:
            return (frames,)
        return RuyiPipelineOutput(frames=frames)
