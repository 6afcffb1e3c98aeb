"""diffusers-ruyi: the Ruyi-Mini-7B image-to-video model (CreateAI) as a Hugging Face diffusers plugin.

Import this package before loading: ``from diffusers_ruyi import RuyiImageToVideoPipeline``. After ``import
diffusers_ruyi``, diffusers also finds the classes by name, so ``DiffusionPipeline.from_pretrained`` loads a folder saved
by ``RuyiImageToVideoPipeline.save_pretrained`` and ``AutoModel.from_pretrained`` a saved transformer or VAE.

The public names are imported lazily, on first access (PEP 562 module ``__getattr__``): ``import diffusers_ruyi``
and the ``ruyi-i2v`` argument parser then cost milliseconds instead of the seconds that importing torch, diffusers
and transformers takes.
"""

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

from ._logging import filter_false_diffusers_warnings
from ._registration import register_with_diffusers


__version__ = "0.1.0"

# Public name -> module that defines it (relative names are inside this package).
_LAZY_ATTRIBUTES: Dict[str, str] = {
    "AutoencoderKLRuyiCausal3D": ".models.autoencoder_kl_ruyi",
    "RuyiTransformer3DModel": ".models.transformer_ruyi",
    "RuyiControlEmbeddings": ".pipelines.controls",
    "RuyiImageToVideoPipeline": ".pipelines.pipeline_ruyi_i2v",
    "RuyiPipelineOutput": ".pipelines.pipeline_output",
    "RuyiLoraLoaderMixin": ".loaders.lora",
    # Saved pipelines name components as ["diffusers_ruyi", "<Class>"]; diffusers' loader looks these base classes
    # up in the resolved library to decide how to load each component, so they must resolve here too.
    "ModelMixin": "diffusers",
    "SchedulerMixin": "diffusers",
}

__all__ = [
    "AutoencoderKLRuyiCausal3D",
    "RuyiControlEmbeddings",
    "RuyiImageToVideoPipeline",
    "RuyiLoraLoaderMixin",
    "RuyiPipelineOutput",
    "RuyiTransformer3DModel",
]


register_with_diffusers()
filter_false_diffusers_warnings()


def __getattr__(name: str) -> Any:
    module_name = _LAZY_ATTRIBUTES.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))


if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from diffusers import ModelMixin, SchedulerMixin  # noqa: F401

    from .loaders.lora import RuyiLoraLoaderMixin  # noqa: F401
    from .models.autoencoder_kl_ruyi import AutoencoderKLRuyiCausal3D  # noqa: F401
    from .models.transformer_ruyi import RuyiTransformer3DModel  # noqa: F401
    from .pipelines.controls import RuyiControlEmbeddings  # noqa: F401
    from .pipelines.pipeline_output import RuyiPipelineOutput  # noqa: F401
    from .pipelines.pipeline_ruyi_i2v import RuyiImageToVideoPipeline  # noqa: F401
