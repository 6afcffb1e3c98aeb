"""diffusers-ruyi: the Ruyi-Mini-7B image-to-video model (CreateAI) as a Hugging Face diffusers plugin.

Import this package before loading: ``from diffusers_ruyi import RuyiImageToVideoPipeline``.
"""

__version__ = "0.1.0"

# Saved pipelines name components as ["diffusers_ruyi", "<Class>"]; diffusers' loader checks the resolved library
# for these base classes, so they are re-exported here.
from diffusers import ModelMixin, SchedulerMixin

from .loaders.lora import RuyiLoraLoaderMixin
from .models.autoencoder_kl_ruyi import AutoencoderKLRuyiCausal3D
from .models.transformer_ruyi import RuyiTransformer3DModel
from .pipelines.controls import RuyiControlEmbeddings
from .pipelines.pipeline_ruyi_i2v import RuyiImageToVideoPipeline, RuyiPipelineOutput


__all__ = [
    "AutoencoderKLRuyiCausal3D",
    "RuyiControlEmbeddings",
    "RuyiImageToVideoPipeline",
    "RuyiLoraLoaderMixin",
    "RuyiPipelineOutput",
    "RuyiTransformer3DModel",
]
