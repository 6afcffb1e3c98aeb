"""diffusers' loading options on the PUBLISHED layout: each model goes through diffusers' own loader.

The published-format golden (tests/fixtures/golden_realfmt) must come out the same whichever way the weights were
placed (`device_map`, `low_cpu_mem_usage=False`), and a torchao int8 weight-only `quantization_config` quantizes the
transformer's Linear weights while it loads.
"""

import os

import numpy as np
import pytest
import torch
from _helpers import hub_cache_snapshot, load_golden_case, logged, run_case
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from diffusers_ruyi import AutoencoderKLRuyiCausal3D, RuyiImageToVideoPipeline, RuyiTransformer3DModel


def _video_and_golden(pipe, golden_realfmt_dir, golden_noise: bool = False):
    """The pipeline's video of the golden case and the original's. With `golden_noise`, the run starts from the
    golden's float32 initial noise: a bfloat16 pipeline draws its own in bfloat16, which is that noise rounded only
    on some torch builds (2.13's CPU `randn`, not 2.11's)."""
    case, start, _, expected = load_golden_case(golden_realfmt_dir, "realfmt_cases.json", "rf_start_only")
    pipe.set_progress_bar_config(disable=True)
    kwargs = {}
    if golden_noise:
        shape = pipe._latent_shape(1, case["frames"], case["h"], case["w"])
        kwargs["latents"] = randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(case["seed"]))
    return run_case(pipe, case, start, **kwargs), expected


@pytest.mark.parametrize(
    "options",
    [{"device_map": "cpu"}, {"low_cpu_mem_usage": False}],
    ids=["device_map-cpu", "low_cpu_mem_usage-False"],
)
def test_published_layout_golden_with_loading_options(tiny_realfmt_checkpoint, golden_realfmt_dir, options):
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, **options)
    video, expected = _video_and_golden(pipe, golden_realfmt_dir)
    assert (video - expected).abs().max().item() <= 1e-4


def test_models_load_the_same_weights_whatever_the_options(tiny_realfmt_checkpoint):
    for model_cls, subfolder in ((RuyiTransformer3DModel, "transformer"), (AutoencoderKLRuyiCausal3D, "vae")):
        default = model_cls.from_pretrained(tiny_realfmt_checkpoint, subfolder=subfolder).state_dict()
        # (`device_map="auto"` needs the model's `_no_split_modules`: the VAE had none.)
        for options in ({"device_map": "cpu"}, {"device_map": "auto"}, {"low_cpu_mem_usage": False}):
            other = model_cls.from_pretrained(tiny_realfmt_checkpoint, subfolder=subfolder, **options).state_dict()
            assert other.keys() == default.keys()
            assert all(torch.equal(other[k], default[k]) for k in default), (model_cls.__name__, options)


def test_torchao_int8_weight_only_on_the_published_layout(tiny_realfmt_checkpoint, golden_realfmt_dir):
    pytest.importorskip("torchao")
    from diffusers import PipelineQuantizationConfig, TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig

    quantization = PipelineQuantizationConfig(quant_mapping={"transformer": TorchAoConfig(Int8WeightOnlyConfig())})
    pipe = RuyiImageToVideoPipeline.from_pretrained(
        tiny_realfmt_checkpoint, dtype=torch.bfloat16, quantization_config=quantization
    )
    weight = pipe.transformer.blocks[0].attn1.to_q.weight
    assert type(weight).__module__.startswith("torchao") and weight.dtype == torch.bfloat16
    assert not type(pipe.vae.decoder.conv_in.weight).__module__.startswith("torchao")  # only the transformer
    video, expected = _video_and_golden(pipe, golden_realfmt_dir, golden_noise=True)
    # int8 weights and bf16 activations: the same video, not the same bits.
    assert video.shape == expected.shape and torch.isfinite(video).all()
    assert (video - expected).abs().mean().item() < 0.05


def test_each_published_component_resolves_its_quantization_as_diffusers_does(tiny_realfmt_checkpoint, monkeypatch):
    # The CLIP image encoder is a transformers model: a global `PipelineQuantizationConfig` must give it the
    # transformers config class (`is_diffusers=False`), the VAE and the transformer diffusers' own, as
    # `DiffusionPipeline.from_pretrained` resolves them.
    pytest.importorskip("torchao")
    from diffusers import PipelineQuantizationConfig, TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig

    quantization = PipelineQuantizationConfig(quant_mapping={"transformer": TorchAoConfig(Int8WeightOnlyConfig())})
    asked = {}

    def resolve(is_diffusers=True, module_name=None):
        asked[module_name] = is_diffusers
        return None  # quantize nothing: only the question matters here

    monkeypatch.setattr(quantization, "_resolve_quant_config", resolve)
    RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, quantization_config=quantization)
    assert asked == {"image_encoder": False, "vae": True, "transformer": True}


def test_variant_of_a_saved_folder(tiny_checkpoint, tmp_path):
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint)
    assert pipe.name_or_path == str(tiny_checkpoint)  # as DiffusionPipeline.from_pretrained records it
    pipe.save_pretrained(tmp_path, variant="bf16")
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.bf16.safetensors").is_file()
    loaded = DiffusionPipeline.from_pretrained(tmp_path, variant="bf16")
    assert type(loaded) is RuyiImageToVideoPipeline
    # A diffusers folder refuses pickle weights before diffusers reads its first component.
    with pytest.raises(ValueError, match="pytorch_model.bin is the one exception, read without it"):
        RuyiImageToVideoPipeline.from_pretrained(tmp_path, use_safetensors=False)
    for name in ("transformer", "vae"):
        original, reloaded = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(original[k], reloaded[k]) for k in original)
    with pytest.raises(OSError, match="fp16"):  # a variant the folder does not have
        RuyiTransformer3DModel.from_pretrained(tmp_path, subfolder="transformer", variant="fp16")


def test_pickle_weights_are_refused_before_anything_is_written(tiny_checkpoint, tmp_path):
    # They would not load back: weights are read from safetensors only.
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint)
    for save, args, kwargs in [
        (pipe.save_pretrained, (), {"safe_serialization": False}),
        (pipe.save_pretrained, (False,), {}),
        (pipe.transformer.save_pretrained, (), {"safe_serialization": False}),
        (pipe.vae.save_pretrained, (True, None, False), {}),  # is_main_process, save_function, safe_serialization
    ]:
        with pytest.raises(ValueError, match="`safe_serialization` must be True: diffusers-ruyi loads weights"):
            save(tmp_path / "out", *args, **kwargs)
        assert not (tmp_path / "out").exists()
    pipe.vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()


def test_bad_save_arguments_are_refused_before_anything_is_written(tiny_checkpoint, tmp_path):
    # diffusers logs some of these and goes on (a component folder that is a file is skipped, a misspelt keyword is
    # dropped, a bad shard size fails after the first component is written): the folder would not load back.
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint)
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "scheduler").write_text("")  # a component diffusers saves with `save_config`
    (tmp_path / "a_file").write_text("")
    blocked_index = tmp_path / "blocked_index"
    (blocked_index / "model_index.json").mkdir(parents=True)
    (blocked_index / "config.json").mkdir()
    out = tmp_path / "out"
    for save, args, kwargs, error, match in [
        (
            pipe.save_pretrained,
            (blocked,),
            {},
            ValueError,
            r"blocked/scheduler' is a file; `save_pretrained` writes a folder",
        ),
        (pipe.save_pretrained, (tmp_path / "a_file",), {}, ValueError, r"a_file' is a file"),
        (pipe.transformer.save_pretrained, (tmp_path / "a_file",), {}, ValueError, r"a_file' is a file"),
        (pipe.save_pretrained, (out,), {"varaint": "fp16"}, TypeError, r"unexpected keyword arguments \['varaint'\]"),
        (pipe.vae.save_pretrained, (out,), {"foo": 1}, TypeError, r"unexpected keyword arguments \['foo'\]; "),
        (pipe.save_pretrained, (out,), {"variant": 16}, TypeError, "`variant` must be a str"),
        (pipe.save_pretrained, (out,), {"max_shard_size": "abc"}, ValueError, "`max_shard_size` must be a positive"),
        (pipe.save_pretrained, (out,), {"max_shard_size": "-1GB"}, ValueError, "`max_shard_size` must be a positive"),
        (pipe.save_pretrained, (out,), {"max_shard_size": "0MB"}, ValueError, "`max_shard_size` must be a positive"),
        (pipe.transformer.save_pretrained, (out,), {"max_shard_size": 0}, ValueError, "`max_shard_size`"),
        (pipe.transformer.save_pretrained, (out,), {"max_shard_size": 1.5}, TypeError, "`max_shard_size`"),
        (pipe.transformer.save_pretrained, (out,), {"max_shard_size": None}, TypeError, "`max_shard_size`"),
        (pipe.save_pretrained, (out,), {"max_shard_size": "0.0001KB"}, ValueError, "`max_shard_size` must be a"),
        (pipe.save_pretrained, (out,), {"max_shard_size": "infGB"}, ValueError, "`max_shard_size` must be a"),
        (pipe.save_pretrained, (blocked_index,), {}, ValueError, r"model_index.json' is a folder; `save_pretrained`"),
        (pipe.vae.save_pretrained, (blocked_index,), {}, ValueError, r"config.json' is a folder"),
        (pipe.save_pretrained, (out,), {"push_to_hub": "no"}, TypeError, "`push_to_hub` must be True or False"),
        # "false" was taken as True.
        (
            pipe.transformer.save_pretrained,
            (out,),
            {"safe_serialization": "false"},
            TypeError,
            "`safe_serialization` must be True or False",
        ),
        (
            pipe.vae.save_pretrained,
            (out,),
            {"is_main_process": 1},
            TypeError,
            "`is_main_process` must be True or False",
        ),
        (pipe.save_pretrained, (3,), {}, TypeError, "`save_directory` must be a str or os.PathLike, got int"),
        (pipe.save_pretrained, (out, True, None, None, False, False, "extra"), {}, TypeError, "save_pretrained"),
    ]:
        with pytest.raises(error, match=match):
            save(*args, **kwargs)
        assert not out.exists() and sorted(os.listdir(blocked)) == ["scheduler"], (args, kwargs)
    # The keywords diffusers reads for `push_to_hub` pass, and a size string too.
    pipe.transformer.save_pretrained(
        out, commit_message="m", private=True, create_pr=False, max_shard_size="1e3MB", is_main_process=np.bool_(True)
    )
    assert (out / "diffusion_pytorch_model.safetensors").is_file()


def test_a_misspelt_loading_option_of_a_saved_folder_is_refused(tiny_checkpoint, tmp_path):
    # diffusers logs "will be ignored" and loads in float32; the original layout refuses it too.
    RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint).save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['dtpye'\]; it takes the components"):
        RuyiImageToVideoPipeline.from_pretrained(tmp_path, dtpye=torch.bfloat16)
    with pytest.raises(TypeError, match=r"^Expected a local folder or a hub id \(str or os.PathLike\), got NoneType"):
        RuyiImageToVideoPipeline.from_pretrained(None)
    loaded = RuyiImageToVideoPipeline.from_pretrained(tmp_path, torch_dtype=torch.bfloat16, low_cpu_mem_usage=True)
    assert loaded.transformer.dtype == torch.bfloat16


def test_bad_loading_options_are_refused_before_loading(tiny_realfmt_checkpoint):
    with pytest.raises(ValueError, match=r"device_map='balanced'.*one device"):
        RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, device_map="balanced")
    with pytest.raises(TypeError, match="`low_cpu_mem_usage` must be True or False, got str 'yes'"):
        RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, low_cpu_mem_usage="yes")
    with pytest.raises(ValueError, match=r"`device_map='gpu'` is not a device; pass 'cuda'"):
        RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, device_map="gpu")
    if not torch.cuda.is_available():  # torch failed on the first weight moved there (an AssertionError)
        for device_map in ("cuda", torch.device("cuda:1")):
            with pytest.raises(ValueError, match=r"^`device_map` 'cuda(:0|:1)?' is not available here: "):
                RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, device_map=device_map)
    with pytest.raises(TypeError, match="must be a `diffusers.PipelineQuantizationConfig`.*got dict"):
        RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, quantization_config={"load_in_8bit": True})
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['not_an_option'\]"):
        RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, not_an_option=1)
    # Before any download: a hub id that is not cached would otherwise be fetched first.
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['dtpye'\]"):
        RuyiImageToVideoPipeline.from_pretrained("someone/not-cached-anywhere", dtpye=torch.bfloat16)
    # A diffusers option the original layout does not take still gets its own answer.
    with pytest.raises(TypeError, match=r"Unsupported argument\(s\).*\['custom_pipeline'\]"):
        RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, custom_pipeline="x")
    with pytest.raises(ValueError, match="safetensors files only"):
        RuyiTransformer3DModel.from_pretrained(tiny_realfmt_checkpoint, subfolder="transformer", use_safetensors=False)
    with pytest.raises(
        ValueError, match="`use_safetensors=False`: diffusers-ruyi loads model weights from safetensors"
    ):
        RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, use_safetensors=False)
    with pytest.raises(ValueError, match=r"`dtype` must be one of \['float32', 'float16', 'bfloat16'\]"):
        RuyiTransformer3DModel.from_pretrained(tiny_realfmt_checkpoint, subfolder="transformer", dtype="float8")
    with pytest.raises(FileNotFoundError, match="check `subfolder`"):
        RuyiTransformer3DModel.from_pretrained(tiny_realfmt_checkpoint, subfolder="transformers")
    with pytest.raises(FileNotFoundError, match=r"'\./no/such/folder' is not an existing folder"):
        AutoencoderKLRuyiCausal3D.from_pretrained("./no/such/folder", subfolder="vae")


def test_the_conversion_module_imports_no_model():
    import subprocess
    import sys

    code = (
        "import sys, diffusers_ruyi.loaders.original_checkpoint\n"
        "ours = sorted(m for m in sys.modules if m.startswith(('diffusers_ruyi.models', 'diffusers_ruyi.pipelines')))\n"
        "assert not ours, ours\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_quanto_int8_on_the_published_transformer(tiny_realfmt_checkpoint):
    # optimum-quanto is not in the test extras (diffusers 0.42 deprecates its quantizer): run where it is installed.
    pytest.importorskip("optimum.quanto")
    from _helpers import run_transformer, transformer_inputs
    from diffusers import QuantoConfig

    plain = RuyiTransformer3DModel.from_pretrained(tiny_realfmt_checkpoint, subfolder="transformer")
    quantized = RuyiTransformer3DModel.from_pretrained(
        tiny_realfmt_checkpoint, subfolder="transformer", quantization_config=QuantoConfig(weights_dtype="int8")
    )
    assert type(quantized.blocks[0].attn1.to_q).__name__ == "QLinear"
    inputs = {**transformer_inputs(dict(plain.config)), "timestep": torch.tensor([500, 500])}
    expected = run_transformer(plain, inputs)
    assert (run_transformer(quantized, inputs) - expected).abs().max().item() < 0.05 * expected.abs().max().item()


def test_a_missing_weight_is_one_error_without_diffusers_warning(tiny_realfmt_checkpoint, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "transformer"
    shutil.copytree(tiny_realfmt_checkpoint / "transformer", folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    state_dict = load_file(str(weights))
    del state_dict["proj_out.weight"]
    save_file(state_dict, str(weights))
    with logged() as records, pytest.raises(ValueError, match=r"Missing keys \(1\): \['proj_out.weight'\]"):
        RuyiTransformer3DModel.from_pretrained(folder)
    # diffusers' own report ("newly initialized ... TRAIN this model") would contradict the error.
    assert not [r for r in records if "newly initialized" in r.getMessage()]


@pytest.mark.parametrize("low_cpu_mem_usage", [True, False])
def test_ignore_mismatched_sizes_keeps_diffusers_warning(tiny_realfmt_checkpoint, low_cpu_mem_usage):
    with logged() as records:
        model, info = RuyiTransformer3DModel.from_pretrained(
            tiny_realfmt_checkpoint / "transformer",
            out_channels=4,
            ignore_mismatched_sizes=True,
            low_cpu_mem_usage=low_cpu_mem_usage,
            output_loading_info=True,
        )
    assert sorted(key for key, *_ in info["mismatched_keys"]) == ["proj_out.bias", "proj_out.weight"]
    # The user asked for the re-initialisation; the one report of which weights are now random must reach them.
    reports = [r.getMessage() for r in records if "shapes did not match" in r.getMessage()]
    assert len(reports) == 1 and "proj_out.weight" in reports[0] and "proj_out.bias" in reports[0]


def test_a_pickle_only_model_folder_is_refused_before_reading(tiny_realfmt_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "vae"
    shutil.copytree(tiny_realfmt_checkpoint / "vae", folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.rename(folder / "diffusion_pytorch_model.bin")  # never unpickled: the check reads names only
    with pytest.raises(ValueError, match=r"only has pickle weights \(\.bin\); diffusers-ruyi loads safetensors only"):
        AutoencoderKLRuyiCausal3D.from_pretrained(folder)
    (folder / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="has no weights: expected diffusion_pytorch_model.safetensors"):
        AutoencoderKLRuyiCausal3D.from_pretrained(folder)


def test_models_from_a_hub_cache_with_revision_and_cache_dir(tiny_realfmt_checkpoint, tmp_path):
    # The published layout in a Hugging Face cache, read (local_files_only) through diffusers' own hub resolution.
    hub_cache_snapshot(tmp_path / "cache", "IamCreateAI/Ruyi-Mini-7B", tiny_realfmt_checkpoint)
    options = dict(cache_dir=str(tmp_path / "cache"), revision="main", local_files_only=True)
    for model_cls, subfolder in ((RuyiTransformer3DModel, "transformer"), (AutoencoderKLRuyiCausal3D, "vae")):
        from_hub = model_cls.from_pretrained("IamCreateAI/Ruyi-Mini-7B", subfolder=subfolder, **options)
        local = model_cls.from_pretrained(tiny_realfmt_checkpoint, subfolder=subfolder).state_dict()
        assert all(torch.equal(from_hub.state_dict()[k], local[k]) for k in local)
    with pytest.raises(OSError):  # a revision the cache does not hold
        RuyiTransformer3DModel.from_pretrained(
            "IamCreateAI/Ruyi-Mini-7B", subfolder="transformer", **{**options, "revision": "v2"}
        )


@pytest.mark.parametrize("low_cpu_mem_usage, shards", [(True, 2), (False, 2), (True, 1)])
def test_a_sharded_original_vae_is_renamed_like_a_single_file(
    tiny_realfmt_checkpoint, tmp_path, low_cpu_mem_usage, shards
):
    # diffusers renames the keys of a single-file checkpoint only; the published VAE split into shards must load the
    # same weights (its attention keys are named otherwise in the model).
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "vae"
    shutil.copytree(tiny_realfmt_checkpoint / "vae", folder)
    single = folder / "diffusion_pytorch_model.safetensors"
    state_dict = load_file(str(single))
    single.unlink()
    keys = sorted(state_dict)
    weight_map = {}
    parts = (keys[: len(keys) // 2], keys[len(keys) // 2 :]) if shards == 2 else (keys,)
    for index, part in enumerate(parts):
        name = f"diffusion_pytorch_model-0000{index + 1}-of-0000{shards}.safetensors"
        save_file({key: state_dict[key] for key in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    index_file = folder / "diffusion_pytorch_model.safetensors.index.json"
    index_file.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    expected = AutoencoderKLRuyiCausal3D.from_pretrained(tiny_realfmt_checkpoint / "vae").state_dict()
    sharded = AutoencoderKLRuyiCausal3D.from_pretrained(folder, low_cpu_mem_usage=low_cpu_mem_usage).state_dict()
    assert sharded.keys() == expected.keys()
    assert all(torch.equal(sharded[key], expected[key]) for key in expected)


def _saved_pipeline(tiny_realfmt_checkpoint, folder):
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint)
    pipe.save_pretrained(folder)
    return pipe


def test_saved_control_embeddings_get_the_original_files_checks(tiny_realfmt_checkpoint, tmp_path):
    # A saved pipeline's control_embeddings: safetensors only, every key, finite embeddings and 0/1 masks, as the
    # original embeddings.safetensors; diffusers alone loaded a pickle, left a missing mask at zeros and took NaN.
    from safetensors.torch import load_file, save_file

    from diffusers_ruyi.pipelines.controls import RuyiControlEmbeddings

    _saved_pipeline(tiny_realfmt_checkpoint, tmp_path / "pipe")
    folder = tmp_path / "pipe" / "control_embeddings"
    weights = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    assert RuyiControlEmbeddings.from_pretrained(folder).names  # as saved: loads

    def with_tensors(**changes):
        changed = {k: v for k, v in {**tensors, **changes}.items() if v is not None}
        save_file(changed, weights)

    with_tensors(mask2=None)
    with pytest.raises(ValueError, match=r"Missing keys \(1\): \['mask2'\]"):
        RuyiControlEmbeddings.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"Missing keys \(1\): \['mask2'\]"):  # through the pipeline too
        RuyiImageToVideoPipeline.from_pretrained(tmp_path / "pipe")
    with_tensors(emb1=torch.full_like(tensors["emb1"], float("nan")))
    with pytest.raises(ValueError, match="emb1 is not finite floating-point embeddings"):
        RuyiControlEmbeddings.from_pretrained(folder)
    with_tensors(mask1=tensors["mask1"] * 5)
    with pytest.raises(ValueError, match="mask1 is not a 0/1 attention mask"):
        RuyiControlEmbeddings.from_pretrained(folder)
    with_tensors()
    torch.save(tensors, folder / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(ValueError, match="only has pickle weights"):
        RuyiControlEmbeddings.from_pretrained(folder)
    with pytest.raises(ValueError, match="safetensors files only"):
        RuyiControlEmbeddings.from_pretrained(folder, use_safetensors=False)


def test_a_saved_pipelines_image_encoder_must_be_safetensors(tiny_realfmt_checkpoint, tmp_path):
    # Only the published original layout's CLIP .bin is read as pickle; a diffusers folder's is refused.
    from safetensors.torch import load_file

    _saved_pipeline(tiny_realfmt_checkpoint, tmp_path / "pipe")
    folder = tmp_path / "pipe" / "image_encoder"
    (weights,) = folder.glob("*.safetensors")
    torch.save(load_file(weights), folder / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(ValueError, match="image_encoder' only has pickle weights"):
        RuyiImageToVideoPipeline.from_pretrained(tmp_path / "pipe")


def test_a_pipeline_folder_given_to_a_model_names_its_subfolders(tiny_realfmt_checkpoint, tmp_path):
    # Each model names the folders that hold its kind only.
    with pytest.raises(FileNotFoundError, match=r"not a model folder \(it holds subfolder='transformer'\)\.$"):
        RuyiTransformer3DModel.from_pretrained(tiny_realfmt_checkpoint)
    with pytest.raises(FileNotFoundError, match=r"not a model folder \(it holds subfolder='vae'\)\.$"):
        AutoencoderKLRuyiCausal3D.from_pretrained(tiny_realfmt_checkpoint)
    from diffusers_ruyi.pipelines.controls import RuyiControlEmbeddings

    _saved_pipeline(tiny_realfmt_checkpoint, tmp_path / "saved")
    with pytest.raises(FileNotFoundError, match=r"\(it holds subfolder='control_embeddings'\)\.$"):
        RuyiControlEmbeddings.from_pretrained(tmp_path / "saved")
    with pytest.raises(FileNotFoundError, match=r"it is not a model folder\.$"):
        AutoencoderKLRuyiCausal3D.from_pretrained(tmp_path)


def test_a_pipeline_saves_with_max_shard_size_none_as_each_models_default(tiny_checkpoint, tmp_path):
    # `None` is diffusers' default for a pipeline: each model's own shard size. Only a model refuses it (see
    # test_bad_save_arguments_are_refused_before_anything_is_written).
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint)
    pipe.save_pretrained(tmp_path, max_shard_size=None)
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert type(DiffusionPipeline.from_pretrained(tmp_path)) is RuyiImageToVideoPipeline
