"""Saving into used folders and loading with wrong options or incomplete folders: clear early errors, no stale files."""

import json
import shutil

import pytest
import torch
from _helpers import files_under

from diffusers_ruyi import AutoencoderKLRuyiCausal3D, RuyiImageToVideoPipeline, RuyiTransformer3DModel
from diffusers_ruyi.tiny import build_tiny_random_pipeline


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "pipe"
    build_tiny_random_pipeline().save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "cls, subfolder, kwargs, match",
    [
        (RuyiTransformer3DModel, "transformer", {"dtpye": torch.float16}, r"'dtpye' \(did you mean 'dtype'\?\)"),
        (
            AutoencoderKLRuyiCausal3D,
            "vae",
            {"torch_dype": torch.float16},
            r"'torch_dype' \(did you mean 'torch_dtype'",
        ),
        (RuyiTransformer3DModel, "transformer", {"low_cpu_mem": False}, r"'low_cpu_mem' \(did you mean"),
    ],
)
def test_a_misspelt_model_loading_option_is_refused(saved, cls, subfolder, kwargs, match):
    # diffusers ignored it without a word: a misspelt dtype loaded the model in float32.
    with pytest.raises(
        TypeError, match=f"{cls.__name__}.from_pretrained\\(\\) got unexpected keyword arguments: {match}"
    ):
        cls.from_pretrained(saved, subfolder=subfolder, **kwargs)


def test_model_config_overrides_and_loading_options_are_still_taken(saved):
    vae = AutoencoderKLRuyiCausal3D.from_pretrained(saved, subfolder="vae", tile_overlap_factor=0.5, dtype="float16")
    assert vae.config.tile_overlap_factor == 0.5 and vae.dtype == torch.float16
    model = RuyiTransformer3DModel.from_pretrained(saved, subfolder="transformer", low_cpu_mem_usage=False)
    assert model.dtype == torch.float32


def test_every_option_of_the_installed_diffusers_is_taken(saved, monkeypatch):
    # `parallel_config` (context parallelism) was missing from the list and refused.
    import inspect
    import re

    from diffusers.models.modeling_utils import ModelMixin

    from diffusers_ruyi.loaders import model_loading

    popped = set(re.findall(r"kwargs\.pop\(\s*\"(\w+)\"", inspect.getsource(ModelMixin.from_pretrained)))
    assert "parallel_config" in popped and popped <= set(model_loading.MODEL_LOADING_KWARGS)
    model = RuyiTransformer3DModel.from_pretrained(saved, subfolder="transformer", parallel_config=None)
    assert model._parallel_config is None
    # An option only a newer diffusers pops is read from its source rather than refused.
    model_loading._installed_diffusers_loading_kwargs.cache_clear()
    monkeypatch.setattr(inspect, "getsource", lambda obj: 'x = kwargs.pop("a_newer_option", None)')
    try:
        assert "a_newer_option" in model_loading._installed_diffusers_loading_kwargs()
    finally:
        model_loading._installed_diffusers_loading_kwargs.cache_clear()


def test_saving_unsharded_over_a_sharded_save_leaves_no_stale_index(saved, tmp_path):
    # diffusers removes the old shards but kept their index, which loading then followed to missing files.
    model = RuyiTransformer3DModel.from_pretrained(saved, subfolder="transformer")
    model.save_pretrained(tmp_path / "model", max_shard_size="100KB")
    assert any(name.endswith(".index.json") for name in files_under(tmp_path / "model"))
    model.save_pretrained(tmp_path / "model")
    assert files_under(tmp_path / "model") == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert torch.equal(
        RuyiTransformer3DModel.from_pretrained(tmp_path / "model").proj_out.weight, model.proj_out.weight
    )
    # The same for a pipeline saved again into its folder (the control embeddings are saved by diffusers alone).
    pipe = RuyiImageToVideoPipeline.from_pretrained(saved)
    pipe.save_pretrained(tmp_path / "pipe", max_shard_size="100KB")
    pipe.save_pretrained(tmp_path / "pipe")
    assert not [name for name in files_under(tmp_path / "pipe") if ".index" in name]
    RuyiImageToVideoPipeline.from_pretrained(tmp_path / "pipe")


@pytest.mark.parametrize("component", ["transformer", "vae", "control_embeddings"])
def test_a_saved_pipeline_without_a_component_folder_names_it(saved, tmp_path, component):
    # diffusers read the missing folder as the pipeline's root and blamed that, after loading the components before.
    folder = tmp_path / "broken"
    shutil.copytree(saved, folder)
    shutil.rmtree(folder / component)
    with pytest.raises(FileNotFoundError, match=rf"lacks the folder\(s\) of \['{component}'\], which its model_index"):
        RuyiImageToVideoPipeline.from_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert component in index


def test_a_truncated_published_clip_bin_is_named_before_any_model_loads(
    tiny_realfmt_checkpoint, tmp_path, monkeypatch
):
    from diffusers_ruyi.loaders.original_pipeline import check_torch_archive

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_realfmt_checkpoint, folder)
    weights = folder / "image_encoder" / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:-1000])  # an interrupted download

    def loaded(*args, **kwargs):
        raise AssertionError("a model loaded before the broken file was named")

    monkeypatch.setattr(AutoencoderKLRuyiCausal3D, "from_pretrained", loaded)
    with pytest.raises(
        ValueError, match=r"pytorch_model.bin' is not a complete PyTorch checkpoint .*download it again"
    ):
        RuyiImageToVideoPipeline.from_pretrained(folder)
    legacy = tmp_path / "legacy.bin"  # torch's pre-zip format is left to torch
    legacy.write_bytes(b"\x80\x02\x8a\x0alegacy pickle")
    check_torch_archive(str(legacy))


def test_a_stale_shard_index_is_found_whatever_the_listing_order(tmp_path, monkeypatch):
    # Kills `continue` -> `break` and the dropped `not` of `not name.endswith(".json")` in remove_stale_shard_indexes
    # (loaders/model_loading.py): every file of the folder is looked at, in any order, and only a JSON shard index
    # whose shards are gone is removed (a variant's index whose shards exist stays).
    from diffusers_ruyi.loaders import model_loading

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "notes.index.txt").write_text("not an index")
    (tmp_path / "kept.safetensors").write_bytes(b"")
    (tmp_path / "kept.safetensors.index.fp16.json").write_text(json.dumps({"weight_map": {"w": "kept.safetensors"}}))
    (tmp_path / "old.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "old-1.safetensors"}}))
    listing = sorted(path.name for path in tmp_path.iterdir())  # the stale index last
    listing.remove("old.safetensors.index.json")
    listing.append("old.safetensors.index.json")
    monkeypatch.setattr(model_loading.os, "listdir", lambda folder: list(listing))
    model_loading.remove_stale_shard_indexes(tmp_path)
    monkeypatch.undo()  # (`Path.iterdir` lists with `os.listdir` too)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(listing[:-1])
