"""`from_single_file` of both models: one weights file (or a state dict) and a config, equal to `from_pretrained`."""

import json
import logging
import shutil

import huggingface_hub
import pytest
import torch
from _helpers import hub_cache_snapshot, logged, write_stored_tables_checkpoint
from safetensors.torch import load_file, save_file

from diffusers_ruyi import AutoencoderKLRuyiCausal3D, RuyiTransformer3DModel
from diffusers_ruyi.loaders import model_loading, original_checkpoint


MODELS = [(RuyiTransformer3DModel, "transformer"), (AutoencoderKLRuyiCausal3D, "vae")]
WEIGHTS = "diffusion_pytorch_model.safetensors"
WARNINGS = "diffusers_ruyi.loaders.original_checkpoint"  # where `check_loaded_keys` names unused tensors


class _PathLike:
    """An `os.PathLike` that is not a `pathlib.Path` (whose `str()` is not its path)."""

    def __init__(self, path):
        self.path = path

    def __fspath__(self):
        return str(self.path)


def assert_same_model(loaded, reference):
    expected = reference.state_dict()
    state = loaded.state_dict()
    assert state.keys() == expected.keys()
    differing = [k for k in expected if state[k].dtype != expected[k].dtype or not torch.equal(state[k], expected[k])]
    assert not differing
    # Where and by which version a config was saved, and diffusers' note of the keys its file lacked.
    where = ("_name_or_path", "_diffusers_version", "_use_default_values")
    config = {k: v for k, v in loaded.config.items() if k not in where}
    assert config == {k: v for k, v in reference.config.items() if k not in where}
    assert not loaded.training


@pytest.fixture(params=["golden", "realfmt"], ids=["cache-vae-checkpoint", "published-format"])
def checkpoint(request, tiny_checkpoint, tiny_realfmt_checkpoint):
    return tiny_checkpoint if request.param == "golden" else tiny_realfmt_checkpoint


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16], ids=["default-dtype", "bfloat16", "float16"])
@pytest.mark.parametrize("model_cls, subfolder", MODELS, ids=["transformer", "vae"])
def test_a_file_loads_as_from_pretrained_loads_its_folder(checkpoint, model_cls, subfolder, dtype):
    reference = model_cls.from_pretrained(checkpoint, subfolder=subfolder, dtype=dtype)
    path = checkpoint / subfolder / WEIGHTS
    with logged(WARNINGS, logging.WARNING) as records:
        loaded = model_cls.from_single_file(path, config=checkpoint, torch_dtype=dtype)
    assert not records
    assert_same_model(loaded, reference)
    assert loaded.config._name_or_path == str(path)
    # The file's dtype does not matter: float32 unless `dtype` says otherwise, as in diffusers.
    assert {p.dtype for p in loaded.parameters()} == {dtype or torch.float32}


@pytest.mark.parametrize("model_cls, subfolder", MODELS, ids=["transformer", "vae"])
def test_a_state_dict_loads_the_same_and_shares_nothing(checkpoint, model_cls, subfolder):
    state_dict = load_file(str(checkpoint / subfolder / WEIGHTS))
    before = {key: value.clone() for key, value in state_dict.items()}
    for dtype in (None, "float16", "bfloat16"):
        loaded = model_cls.from_single_file(state_dict, config=checkpoint / subfolder, dtype=dtype)
        assert_same_model(loaded, model_cls.from_pretrained(checkpoint, subfolder=subfolder, dtype=dtype))
        assert loaded.config._name_or_path == "the given state dict"
        with torch.no_grad():
            for parameter in loaded.parameters():
                parameter.zero_()
    # The caller's dict: the same keys (the VAE's original keys are renamed in a copy) and tensors, never shared.
    assert list(state_dict) == list(before)
    assert all(torch.equal(state_dict[key], value) for key, value in before.items())


@pytest.mark.parametrize("as_state_dict", [False, True], ids=["file", "state-dict"])
def test_the_default_dtype_is_the_models_as_in_from_pretrained(tiny_realfmt_checkpoint, tmp_path, as_state_dict):
    # float64 weights that float32 cannot hold: loaded under a float64 default dtype, they must not round through it.
    folder = tmp_path / "vae"
    folder.mkdir()
    shutil.copy(tiny_realfmt_checkpoint / "vae" / "config.json", folder / "config.json")
    weights = load_file(str(tiny_realfmt_checkpoint / "vae" / WEIGHTS))
    weights = {key: value.double() + 1e-12 for key, value in weights.items()}
    save_file(weights, str(folder / WEIGHTS))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        reference = AutoencoderKLRuyiCausal3D.from_pretrained(folder)
        loaded = AutoencoderKLRuyiCausal3D.from_single_file(
            weights if as_state_dict else folder / WEIGHTS, config=folder
        )
    finally:
        torch.set_default_dtype(previous)
    assert_same_model(loaded, reference)
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    assert not torch.equal(loaded.encoder.conv_in.weight, loaded.encoder.conv_in.weight.float().double())


@pytest.mark.parametrize("as_state_dict", [False, True], ids=["file", "state-dict"])
def test_stored_temporal_tables_set_the_dtype_they_were_stored_in(tmp_path, as_state_dict):
    checkpoint = write_stored_tables_checkpoint(tmp_path / "ckpt")
    path = checkpoint / "transformer" / WEIGHTS
    source = load_file(str(path)) if as_state_dict else path
    with logged(WARNINGS, logging.WARNING) as records:
        loaded = RuyiTransformer3DModel.from_single_file(source, config=checkpoint)
    assert not records  # the stored tables are skipped without a word, as by `from_pretrained`
    assert loaded.config.temporal_embedding_dtype == "bfloat16"
    reference = RuyiTransformer3DModel.from_pretrained(checkpoint, subfolder="transformer")
    assert_same_model(loaded, reference)
    # A config that says it keeps its value; `model.config` (which lists the key among the defaults its file
    # lacked) and the saved folder keep it too.
    config = {**reference.config, "temporal_embedding_dtype": "float16"}
    assert RuyiTransformer3DModel.from_single_file(source, config=config).config.temporal_embedding_dtype == "float16"
    reference.save_pretrained(tmp_path / "saved")
    for config in (reference.config, tmp_path / "saved"):
        from_saved = RuyiTransformer3DModel.from_single_file(tmp_path / "saved" / WEIGHTS, config=config)
        assert from_saved.config.temporal_embedding_dtype == "bfloat16"
    with pytest.raises(ValueError, match="temporal_embedding_dtype"):  # the constructor's check, no longer bypassed
        RuyiTransformer3DModel.from_single_file(
            source, config={**reference.config, "temporal_embedding_dtype": "int8"}
        )


def test_a_stored_temporal_table_sets_no_dtype_on_the_vae(tiny_realfmt_checkpoint):
    # Kills `model_type == "transformer"` -> `>= "transformer"` in `from_single_file`: "vae" sorts after
    # "transformer", and a VAE file that also holds a bfloat16 `blocks.N.t_embed.pe` (a tensor the VAE lacks, only
    # named as unused) must not get the transformer-only `temporal_embedding_dtype` in its config.
    state_dict = load_file(str(tiny_realfmt_checkpoint / "vae" / WEIGHTS))
    state_dict["blocks.0.t_embed.pe"] = torch.zeros(1, 4, 8, dtype=torch.bfloat16)
    with logged(WARNINGS, logging.WARNING) as records:
        loaded = AutoencoderKLRuyiCausal3D.from_single_file(state_dict, config=tiny_realfmt_checkpoint)
    assert len(records) == 1 and "blocks.0.t_embed.pe" in records[0].getMessage()
    assert "temporal_embedding_dtype" not in loaded.config
    reference = AutoencoderKLRuyiCausal3D.from_pretrained(tiny_realfmt_checkpoint, subfolder="vae")
    assert loaded.config.keys() - {"_name_or_path"} == reference.config.keys() - {"_name_or_path"}


def test_the_config_is_found_however_it_is_given(tiny_realfmt_checkpoint, tmp_path):
    path = tiny_realfmt_checkpoint / "transformer" / WEIGHTS
    reference = RuyiTransformer3DModel.from_pretrained(tiny_realfmt_checkpoint, subfolder="transformer")
    original_config = json.loads((tiny_realfmt_checkpoint / "transformer" / "config.json").read_text())
    reference.save_pretrained(tmp_path / "diffusers-format")
    # The published folder has been spelled `transformers/` too.
    shutil.copytree(tiny_realfmt_checkpoint / "transformer", tmp_path / "root" / "transformers")
    configs = [
        dict(config=tiny_realfmt_checkpoint),  # a checkpoint root: its transformer/
        dict(config=tmp_path / "root"),  # ... or transformers/
        dict(config=str(tiny_realfmt_checkpoint / "transformer")),  # a model folder
        dict(config=tiny_realfmt_checkpoint / "transformer" / "config.json"),  # its config file
        dict(config=tiny_realfmt_checkpoint, subfolder="transformer"),
        dict(config=tiny_realfmt_checkpoint / "transformer", subfolder=""),
        dict(config=original_config),  # an original config.json as loaded: converted
        dict(config=reference.config),  # a model's config
        dict(config=tmp_path / "diffusers-format"),
    ]
    for options in configs:
        assert_same_model(RuyiTransformer3DModel.from_single_file(path, **options), reference)
    # Any `os.PathLike`, for the file and for the config.
    loaded = RuyiTransformer3DModel.from_single_file(_PathLike(path), config=_PathLike(tiny_realfmt_checkpoint))
    assert_same_model(loaded, reference)
    # A folder with a config.json of its own is a model folder, whatever its sub-folders.
    shutil.copy(tiny_realfmt_checkpoint / "vae" / "config.json", tmp_path / "root" / "config.json")
    with pytest.raises(ValueError, match=r"from '.*root' is a 'AutoencoderKL' config, not a RuyiTransformer3DModel"):
        RuyiTransformer3DModel.from_single_file(path, config=tmp_path / "root")
    with pytest.raises(FileNotFoundError, match=r"has no config.json for the RuyiTransformer3DModel in \['\.'\]"):
        RuyiTransformer3DModel.from_single_file(path, config=tiny_realfmt_checkpoint, subfolder="")
    # A file saved by `save_pretrained` (this package's keys) loads too, and an original VAE config dict converts.
    vae = AutoencoderKLRuyiCausal3D.from_pretrained(tiny_realfmt_checkpoint, subfolder="vae")
    vae.save_pretrained(tmp_path / "vae")
    original_vae_config = json.loads((tiny_realfmt_checkpoint / "vae" / "config.json").read_text())
    for config in (tmp_path / "vae", original_vae_config):
        assert_same_model(AutoencoderKLRuyiCausal3D.from_single_file(tmp_path / "vae" / WEIGHTS, config=config), vae)


def test_a_hub_config_downloads_only_config_files(tiny_realfmt_checkpoint, monkeypatch):
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tiny_realfmt_checkpoint)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    loaded = RuyiTransformer3DModel.from_single_file(
        tiny_realfmt_checkpoint / "transformer" / WEIGHTS, config="someone/ruyi", revision="v2", token="t"
    )
    assert_same_model(loaded, RuyiTransformer3DModel.from_pretrained(tiny_realfmt_checkpoint, subfolder="transformer"))
    assert calls == [
        (
            "someone/ruyi",
            dict(
                revision="v2",
                token="t",
                allow_patterns=["config.json", "transformer/config.json", "transformers/config.json"],
            ),
        )
    ]
    # A sub-folder is looked up in one spelling, as the Hub's file filter matches it.
    for subfolder in ("transformer/", "./transformer", "transformer"):
        calls.clear()
        RuyiTransformer3DModel.from_single_file(
            tiny_realfmt_checkpoint / "transformer" / WEIGHTS, config="someone/ruyi", subfolder=subfolder
        )
        assert calls == [("someone/ruyi", dict(allow_patterns=["transformer/config.json"]))]


def test_without_config_the_published_repository_is_used(tiny_realfmt_checkpoint, tmp_path):
    path = tiny_realfmt_checkpoint / "vae" / WEIGHTS
    missing = (
        r"'IamCreateAI/Ruyi-Mini-7B' is not in the local Hugging Face cache .* \(`hf download IamCreateAI/Ruyi-Mini-7B "
        r"--include '\*config.json'{}`\), or pass `config=` a local folder\."
    )
    with pytest.raises(FileNotFoundError, match=missing.format("")):
        AutoencoderKLRuyiCausal3D.from_single_file(path, local_files_only=True)
    cache = tmp_path / "cache"
    hub_cache_snapshot(cache, "IamCreateAI/Ruyi-Mini-7B", tiny_realfmt_checkpoint)
    reference = AutoencoderKLRuyiCausal3D.from_pretrained(tiny_realfmt_checkpoint, subfolder="vae")
    loaded = AutoencoderKLRuyiCausal3D.from_single_file(path, cache_dir=str(cache), local_files_only=True)
    assert_same_model(loaded, reference)
    # A revision of the config the cache does not hold: the command fetches it into that cache.
    with pytest.raises(FileNotFoundError, match=missing.format(f" --revision v2 --cache-dir {cache}")):
        AutoencoderKLRuyiCausal3D.from_single_file(path, cache_dir=str(cache), local_files_only=True, revision="v2")


URL_PATH = "transformer/diffusion_pytorch_model.safetensors"


@pytest.mark.parametrize(
    "url, revision",
    [
        (f"https://huggingface.co/someone/ruyi-files/blob/main/{URL_PATH}", "main"),
        (f"https://huggingface.co/someone/ruyi-files/resolve/main/{URL_PATH}?download=true", "main"),
        (f"hf.co/someone/ruyi-files/blob/main/{URL_PATH}", "main"),
        (f"www.huggingface.co/someone/ruyi-files/blob/main/{URL_PATH}", "main"),
        (f"http://www.HuggingFace.co/someone/ruyi-files/blob/v1.0/{URL_PATH}#L1", "v1.0"),
        (f"https://huggingface.co/someone/ruyi-files/blob/refs%2Fpr%2F1/{URL_PATH}", "refs/pr/1"),
        (f"https://huggingface.co/someone/ruyi-files/blob/refs/pr/1/{URL_PATH}", "refs/pr/1"),
        (f"https://huggingface.co/someone/ruyi-files/{URL_PATH}", None),  # diffusers' short form
        (f"https://hub.example.org/someone/ruyi-files/blob/main/{URL_PATH}", "main"),  # HF_ENDPOINT's host
    ],
    ids=[
        "blob",
        "resolve-query",
        "no-scheme",
        "www-no-scheme",
        "http-www-fragment",
        "encoded-pr",
        "pr",
        "short",
        "endpoint",
    ],
)
def test_a_hub_file_url(tiny_realfmt_checkpoint, monkeypatch, url, revision):
    calls = []
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://hub.example.org")

    def hf_hub_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        return str(tiny_realfmt_checkpoint / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    hub = dict(cache_dir="c", force_download=True, local_files_only=True, token="t", revision="config-revision")
    loaded = RuyiTransformer3DModel.from_single_file(url, config=tiny_realfmt_checkpoint, **hub)
    assert_same_model(loaded, RuyiTransformer3DModel.from_pretrained(tiny_realfmt_checkpoint, subfolder="transformer"))
    # `revision` is the config's: the URL names its file's.
    expected = dict(revision=revision, cache_dir="c", force_download=True, local_files_only=True, token="t")
    assert calls == [("someone/ruyi-files", URL_PATH, expected)]


def test_a_hub_file_that_cannot_be_downloaded(tiny_realfmt_checkpoint, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    hub_cache_snapshot(cache, "someone/ruyi-files", tiny_realfmt_checkpoint)
    url = f"https://huggingface.co/someone/ruyi-files/blob/v2/{URL_PATH}"
    options = dict(config=tiny_realfmt_checkpoint, cache_dir=str(cache))
    command = (
        rf"\(`hf download someone/ruyi-files {URL_PATH} --revision v2 --cache-dir {cache}`\), or pass a local file"
    )
    with pytest.raises(FileNotFoundError, match=command):
        RuyiTransformer3DModel.from_single_file(url, **options)  # HF_HUB_OFFLINE=1
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(FileNotFoundError, match=r"downloading is off \(HF_HUB_OFFLINE=1 or local_files_only\)"):
        RuyiTransformer3DModel.from_single_file(url, local_files_only=True, **options)

    def unreachable(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("no connection")

    def refused(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("not cached") from OSError("connection refused")

    for download, reason in ((unreachable, "no connection"), (refused, "OSError: connection refused")):
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
        with pytest.raises(ConnectionError, match=rf"could not be downloaded .* could not be reached \({reason}\)"):
            RuyiTransformer3DModel.from_single_file(url, **options)


def test_weights_the_model_does_not_have_are_not_read_and_named_in_a_warning(
    tiny_realfmt_checkpoint, tmp_path, monkeypatch
):
    read = []
    original_read = model_loading.read_safetensors

    def spy(path, dtype=None, keys=None):
        read.append(set(keys))
        return original_read(path, dtype=dtype, keys=keys)

    monkeypatch.setattr(model_loading, "read_safetensors", spy)
    state_dict = load_file(str(tiny_realfmt_checkpoint / "vae" / WEIGHTS))
    # One a dtype this package does not read: fine, since it is not read.
    extra = {"extra.meta": torch.zeros(4, dtype=torch.uint32), "extra.weight": torch.zeros(2)}
    save_file({**state_dict, **extra}, str(tmp_path / "extra.safetensors"))
    for source in ({**state_dict, "extra.weight": torch.zeros(2)}, tmp_path / "extra.safetensors"):
        with logged(WARNINGS, logging.WARNING) as records:
            AutoencoderKLRuyiCausal3D.from_single_file(source, config=tiny_realfmt_checkpoint)
        assert len(records) == 1 and "extra.weight" in records[0].getMessage()
    assert read == [set(state_dict)]  # the file's own keys, the model's weights only


def test_a_key_in_both_spellings_loads_the_originals_as_from_pretrained(tiny_realfmt_checkpoint, tmp_path):
    weights = load_file(str(tiny_realfmt_checkpoint / "vae" / WEIGHTS))
    original_key = "decoder.mid_block.attentions.0.to_out.weight"
    renamed = {original_checkpoint.convert_vae_key(original_key): torch.full_like(weights[original_key], 7.0)}
    folder = tmp_path / "vae"
    folder.mkdir()
    shutil.copy(tiny_realfmt_checkpoint / "vae" / "config.json", folder / "config.json")
    save_file({**weights, **renamed}, str(folder / WEIGHTS))
    reference = AutoencoderKLRuyiCausal3D.from_pretrained(folder)
    assert torch.equal(reference.decoder.mid_block.attentions[0].to_out[0].weight, weights[original_key])
    for source in (folder / WEIGHTS, {**renamed, **weights}, {**weights, **renamed}):
        assert_same_model(AutoencoderKLRuyiCausal3D.from_single_file(source, config=folder), reference)


@pytest.fixture
def nothing_is_read(monkeypatch):
    """Fails a test that reads a weight: these errors must come from the names and shapes alone."""

    def boom(*args, **kwargs):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(model_loading, "read_safetensors", boom)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)
    return boom


def test_a_checkpoint_that_does_not_fit_is_refused_before_reading(
    tiny_realfmt_checkpoint, real_checkpoint_dir, tmp_path, nothing_is_read
):
    path = tiny_realfmt_checkpoint / "transformer" / WEIGHTS
    published = json.loads((real_checkpoint_dir / "transformer_config.json").read_text())
    with pytest.raises(
        ValueError, match=r"does not fit the config \(the given config dict\): 263 weight\(s\) of"
    ) as error:
        RuyiTransformer3DModel.from_single_file(path, config=published)
    assert str(error.value).count(" in the model") == 10  # the first ten named
    state_dict = load_file(str(path))
    last = sorted(state_dict)[-1]  # every weight is checked, the last one too
    weights = {
        **state_dict,
        last: torch.zeros(3),  # smaller than the model's
        "pos_embed.proj.bias": torch.zeros(64),  # larger: (32,) in the model
        "proj_out.bias": state_dict["proj_out.bias"].long(),
    }
    save_file(weights, str(tmp_path / "bad.safetensors"))
    for source in (weights, tmp_path / "bad.safetensors"):
        with pytest.raises(ValueError, match=r": 3 weight\(s\) of another shape or dtype") as error:
            RuyiTransformer3DModel.from_single_file(source, config=tiny_realfmt_checkpoint)
        assert f"{last}: (3,) in the file" in str(error.value)
        assert "pos_embed.proj.bias: (64,) in the file, (32,) in the model" in str(error.value)
        assert "proj_out.bias: not a floating-point tensor (torch.int64)" in str(error.value)
    del state_dict["proj_out.weight"], state_dict["proj_out.bias"]
    save_file(state_dict, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match=r"Missing keys \(2\): \['proj_out.bias', 'proj_out.weight'\]"):
        RuyiTransformer3DModel.from_single_file(tmp_path / "partial.safetensors", config=tiny_realfmt_checkpoint)
    with pytest.raises(ValueError, match=r"holds none of the model's \d+ weights .* not this model's file"):
        RuyiTransformer3DModel.from_single_file(
            tiny_realfmt_checkpoint / "vae" / WEIGHTS, config=tiny_realfmt_checkpoint
        )


def test_a_bad_config_is_refused_before_the_file_is_downloaded(tiny_realfmt_checkpoint, tmp_path, nothing_is_read):
    url = f"https://huggingface.co/someone/ruyi-files/blob/main/{URL_PATH}"
    config = dict(RuyiTransformer3DModel.from_pretrained(tiny_realfmt_checkpoint, subfolder="transformer").config)
    vae_config = dict(AutoencoderKLRuyiCausal3D.from_pretrained(tiny_realfmt_checkpoint, subfolder="vae").config)
    cases = [
        (ValueError, r"is a 'AutoencoderKL' config, not a RuyiTransformer3DModel", tiny_realfmt_checkpoint / "vae"),
        (ValueError, r"is a 'AutoencoderKLRuyiCausal3D' config, not a RuyiTransformer3DModel", vae_config),
        (ValueError, r"is a 'RuyiTransformer3DModel' config, not a AutoencoderKLRuyiCausal3D", config),
        (ValueError, r"num_layers", {**config, "num_layers": 0}),
        (FileNotFoundError, r"has no config.json for the RuyiTransformer3DModel", tmp_path),
    ]
    for error, message, bad in cases:
        model_cls = AutoencoderKLRuyiCausal3D if "not a AutoencoderKL" in message else RuyiTransformer3DModel
        with pytest.raises(error, match=message):
            model_cls.from_single_file(url, config=bad)


def test_bad_arguments_are_refused_before_anything_loads(tiny_realfmt_checkpoint, tmp_path, nothing_is_read):
    path = tiny_realfmt_checkpoint / "transformer" / WEIGHTS
    config = tiny_realfmt_checkpoint
    load = RuyiTransformer3DModel.from_single_file
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:-100])
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    cases = [
        (TypeError, r"unsupported argument\(s\) \['device_map'\]", dict(device_map="cpu")),
        (TypeError, r"unsupported argument\(s\) \['low_cpu_mem_usage'\]", dict(low_cpu_mem_usage=False)),
        (ValueError, r"`dtype`", dict(dtype=torch.int8)),
        (ValueError, r"not a dict per component", dict(dtype={"default": torch.float16})),
        (
            TypeError,
            r"`config` must be a folder, a config.json file, a Hub repository id or a config dict",
            dict(config=3),
        ),
        (TypeError, r"`subfolder` must be a str", dict(subfolder=1)),
        (
            ValueError,
            r"`subfolder` is where a folder's config.json is; `config` is a dict",
            dict(config={}, subfolder="x"),
        ),
        (ValueError, r"`subfolder` must be a relative path inside `config`, got '\.\./vae'", dict(subfolder="../vae")),
        (ValueError, r"`subfolder` must be a relative path inside `config`", dict(subfolder=str(tmp_path))),
        (ValueError, r"`subfolder` must be a relative path inside `config`", dict(subfolder="vae\\..\\..")),
        (TypeError, r"`device` must be a str or torch.device", dict(device=0.5)),
        (ValueError, r"`device` 'gpu' is not a device", dict(device="gpu")),
        (ValueError, r"`device='meta'` keeps no weights", dict(device="meta")),
    ]
    if not torch.cuda.is_available():
        cases.append((ValueError, r"`device` 'cuda' is not available here", dict(device="cuda")))
    for error, message, options in cases:
        with pytest.raises(error, match=message):
            load(path, **{"config": config, **options})
    sources = [
        (TypeError, r"must be a path, a Hub file URL or a state dict, got int", 7),
        (
            ValueError,
            r"is not a \.safetensors file; diffusers-ruyi loads model weights from safetensors only",
            tmp_path / "model.bin",
        ),
        (
            ValueError,
            r"is the index of a sharded checkpoint; load its folder with `from_pretrained`",
            tmp_path / "model.safetensors.index.json",
        ),
        (ValueError, r"is a folder; `from_single_file` reads one weights file", tiny_realfmt_checkpoint),
        (
            FileNotFoundError,
            r"is not an existing file \(nor a Hugging Face Hub file URL\)",
            tmp_path / "no.safetensors",
        ),
        (FileNotFoundError, r"is not an existing file", "diffusion_pytorch_model.safetensors"),  # not a host
        (FileNotFoundError, r"is not an existing file", "C:\\Ruyi\\transformer\\diffusion_pytorch_model.safetensors"),
        (FileNotFoundError, r"is not an existing file", "run#2/diffusion_pytorch_model.safetensors"),
        (FileNotFoundError, r"is not a Hugging Face Hub file URL", "https://example.com/a/b/blob/main/w.safetensors"),
        (
            ValueError,
            r"is in a dataset repository; model weights are in model",
            "https://huggingface.co/datasets/a/b/blob/main/w.safetensors",
        ),
        (ValueError, r"is not a Hub file URL", "https://huggingface.co/a/b/tree/main/w.safetensors"),
        (ValueError, r"is not a Hub file URL", "https://huggingface.co/a/b/blob/main/sub/..%2Fw.safetensors"),
        (
            ValueError,
            r"is not a Hub file URL: expected https://huggingface.co/<owner>/<name>/blob/",
            "https://huggingface.co/a/w.safetensors",
        ),
        (ValueError, r"is not a Hub file URL", "https://huggingface.co/a/b/blob/main/../w.safetensors"),
        (ValueError, r"is not a Hub file URL", "https://huggingface.co/a/b/blob/main.safetensors"),
        (ValueError, r"is not a Hub file URL", "https://huggingface.co/w.safetensors"),
        (ValueError, r"is truncated", tmp_path / "cut.safetensors"),
        (TypeError, r"these entries do not: \['w'\]", {"w": [1.0]}),
        (TypeError, r"these entries do not: \[1\]", {1: torch.zeros(1)}),
        (ValueError, r"holds meta tensors, which carry no weights: \['w'\]", {"w": torch.empty(2, device="meta")}),
    ]
    for error, message, source in sources:
        with pytest.raises(error, match=message):
            load(source, config=config)


def test_device_places_the_weights(tiny_realfmt_checkpoint, monkeypatch):
    from diffusers.models import model_loading_utils

    placed = []

    original = model_loading_utils.load_model_dict_into_meta

    def spy(model, state_dict, **kwargs):
        placed.append(kwargs["device_map"])
        return original(model, state_dict, **kwargs)

    monkeypatch.setattr(model_loading_utils, "load_model_dict_into_meta", spy)
    loaded = RuyiTransformer3DModel.from_single_file(
        tiny_realfmt_checkpoint / "transformer" / WEIGHTS, config=tiny_realfmt_checkpoint, device="cpu:0"
    )
    assert placed == [{"": torch.device("cpu", 0)}]
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
