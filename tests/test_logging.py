"""`diffusers_ruyi._logging`: diffusers' false "modules that should be kept in float32: []" warning is dropped for
this package's models, and only for them."""

import logging

import torch
from _helpers import logged
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config

from diffusers_ruyi import AutoencoderKLRuyiCausal3D, RuyiControlEmbeddings, RuyiTransformer3DModel
from diffusers_ruyi._logging import filter_false_diffusers_warnings
from diffusers_ruyi.tiny import build_tiny_random_pipeline


def _fp32_warnings(records):
    return [r.getMessage() for r in records if "should be kept in float32" in r.getMessage()]


def test_casting_the_pipeline_logs_no_false_fp32_warning():
    pipe = build_tiny_random_pipeline()
    with logged() as records:
        pipe.to(torch.bfloat16)
        pipe.transformer.to(dtype=torch.float32)
    assert _fp32_warnings(records) == []
    assert pipe.transformer.dtype == torch.float32 and pipe.vae.dtype == torch.bfloat16


def test_the_warning_is_false_for_every_model_it_is_dropped_for():
    # Dropping it is right only while these models keep no module in float32.
    for cls in (RuyiTransformer3DModel, AutoencoderKLRuyiCausal3D, RuyiControlEmbeddings):
        assert not cls._keep_in_fp32_modules, cls.__name__


class _Keeps(ModelMixin, ConfigMixin):
    _keep_in_fp32_modules = ["proj"]

    @register_to_config
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(2, 2)


class _KeepsNothing(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(2, 2)


def test_other_models_warn_as_diffusers_makes_them():
    filter_false_diffusers_warnings()  # twice: still one filter
    logger = logging.getLogger("diffusers.models.modeling_utils")
    assert sum(getattr(f, "_diffusers_ruyi", False) for f in logger.filters) == 1
    with logged() as records:
        _Keeps().to(torch.float16)
        _KeepsNothing().to(torch.float16)
    assert _fp32_warnings(records) == [
        "There are modules in _Keeps that should be kept in float32: ['proj']. Casting directly with `to()` can lead "
        "to inconsistent results; set `torch_dtype` in `from_pretrained()` instead to keep these modules in float32.",
        "There are modules in _KeepsNothing that should be kept in float32: []. Casting directly with `to()` can lead "
        "to inconsistent results; set `torch_dtype` in `from_pretrained()` instead to keep these modules in float32.",
    ]


def test_the_filter_is_added_beside_other_filters(monkeypatch):
    logger = logging.getLogger("diffusers.models.modeling_utils")
    foreign = logging.Filter("somebody.else")
    monkeypatch.setattr(logger, "filters", [foreign])  # ours not yet added; another package's is
    filter_false_diffusers_warnings()
    assert logger.filters[0] is foreign and getattr(logger.filters[1], "_diffusers_ruyi", False)
    assert len(logger.filters) == 2
