"""benchmarks/original_driver.py, the parts that run without the original: its posterior-noise patch must draw what
this package draws, or the sweep's bfloat16 verdicts compare two noises instead of two implementations."""

import importlib.util
import pathlib

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from diffusers_ruyi.pipelines.pipeline_ruyi_i2v import _posterior_generator


DRIVER = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "original_driver.py"


class _OriginalLikePipeline:
    """Samples two posteriors in `prepare_mask_latents` without a generator, as the original does; the generator
    arrives as its 8th positional argument, where the original's call puts it."""

    def prepare_mask_latents(self, mask, masked, batch, height, width, dtype, device, generator, cfg):
        moments = torch.linspace(-2, 2, 2 * 4 * 2 * 3 * 3).view(1, 8, 2, 3, 3)
        return [DiagonalGaussianDistribution(moments).sample() for _ in range(2)]


def test_posterior_noise_is_the_packages(monkeypatch):
    spec = importlib.util.spec_from_file_location("ruyi_original_driver", DRIVER)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", DiagonalGaussianDistribution.sample)  # restored after

    moments = torch.linspace(-2, 2, 2 * 4 * 2 * 3 * 3).view(1, 8, 2, 3, 3)
    draws = _posterior_generator(torch.Generator().manual_seed(11))
    expected = [DiagonalGaussianDistribution(moments).sample(generator=draws) for _ in range(2)]

    unpatched = DiagonalGaussianDistribution.sample
    pipe = _OriginalLikePipeline()
    driver._posterior_noise_as_package(pipe)
    samples = pipe.prepare_mask_latents(*range(7), torch.Generator().manual_seed(11), True)
    assert all(torch.equal(a, b) for a, b in zip(samples, expected))
    # Outside `prepare_mask_latents` the patched `sample` draws from the global RNG, as the original's does.
    torch.manual_seed(0)
    outside = DiagonalGaussianDistribution(moments).sample()
    torch.manual_seed(0)
    assert torch.equal(outside, unpatched(DiagonalGaussianDistribution(moments)))


def test_a_missing_pkg_resources_is_stood_in_for(monkeypatch):
    # setuptools 82 and later ship no `pkg_resources`, which the original imports to compare diffusers' version.
    import sys

    spec = importlib.util.spec_from_file_location("ruyi_original_driver", DRIVER)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # what find_spec reports for a missing module
    driver._provide_pkg_resources()
    stand_in = sys.modules["pkg_resources"]
    assert stand_in.parse_version("0.31.0") >= stand_in.parse_version("0.28.2")
    assert stand_in.parse_version("0.9") < stand_in.parse_version("0.28.2")
    # An installed one is left as it is.
    real = object()
    monkeypatch.setitem(sys.modules, "pkg_resources", real)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    driver._provide_pkg_resources()
    assert sys.modules["pkg_resources"] is real


def test_random_lora_alphas_differ_from_module_to_module():
    # The sweep's LoRA files are to test a different alpha per module; with three keys a module, an index over all
    # keys gave every module the same one.
    spec = importlib.util.spec_from_file_location("ruyi_original_driver", DRIVER)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    state = {}
    for module in ("lora_unet_a", "lora_unet_b", "lora_unet_c", "lora_unet_d"):
        state[f"{module}.alpha"] = torch.tensor(4.0)
        state[f"{module}.lora_down.weight"] = torch.zeros(4, 8)
        state[f"{module}.lora_up.weight"] = torch.zeros(8, 4)
    weights = driver.random_lora_weights(state, 4)
    assert [weights[f"lora_unet_{m}.alpha"].item() for m in "abcd"] == [4, 5, 6, 4]
    assert weights.keys() == state.keys() and weights["lora_unet_a.lora_down.weight"].abs().sum() > 0
