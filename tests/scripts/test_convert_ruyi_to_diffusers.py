import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from diffusers_ruyi import RuyiImageToVideoPipeline, RuyiTransformer3DModel


SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "convert_ruyi_to_diffusers.py"


def _converter():
    spec = importlib.util.spec_from_file_location("convert_ruyi_to_diffusers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converts_original_layout(tiny_checkpoint, golden_dir, tmp_path):
    out = tmp_path / "ruyi-diffusers"
    _converter().main(["--checkpoint", str(tiny_checkpoint), "--output", str(out)])
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "RuyiImageToVideoPipeline"
    assert index["vae"] == ["diffusers_ruyi", "AutoencoderKLRuyiCausal3D"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "control_embeddings",
            "image_encoder",
            "image_processor",
            "model_index.json",
            "scheduler",
            "transformer",
            "vae",
        ]
    )
    assert not list(tmp_path.glob(".ruyi-convert-*"))  # the temporary folder was renamed, not left behind

    # The converted transformer is a plain diffusers checkpoint that reproduces the golden forward pass.
    transformer = RuyiTransformer3DModel.from_pretrained(out, subfolder="transformer")
    assert json.loads((out / "transformer" / "config.json").read_text())["_class_name"] == "RuyiTransformer3DModel"
    golden = load_file(str(golden_dir / "transformer_forward.safetensors"))
    expected = golden.pop("output")
    rope = (golden.pop("rope_cos"), golden.pop("rope_sin"))
    with torch.no_grad():
        out_t = transformer(**golden, image_rotary_emb=rope).sample
    assert (out_t - expected).abs().max() <= 1e-4


def test_refuses_existing_output(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    with pytest.raises(SystemExit) as e:
        _converter().main(["--checkpoint", str(tiny_checkpoint), "--output", str(out)])
    assert e.value.code == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_python_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "diffusers_ruyi", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "ruyi-i2v" in proc.stdout and "--last-image" in proc.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--max-shard-size", "5 gigs"],
            "--max-shard-size must be a positive size such as 5GB or 500MB, got '5 gigs'",
        ),
        # huggingface_hub parses these to 0 or less: save_pretrained failed after the whole load.
        (["--max-shard-size", "0MB"], "--max-shard-size must be a positive size such as 5GB or 500MB, got '0MB'"),
        (["--max-shard-size", "0.0001KB"], "got '0.0001KB'"),
        (["--checkpoint", "no/such/folder"], "--checkpoint 'no/such/folder' could not be loaded: "),
    ],
)
def test_bad_arguments_are_one_error_line(tiny_checkpoint, tmp_path, capsys, argv, message):
    args = ["--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "out"), *argv]
    with pytest.raises(SystemExit) as e:
        _converter().main(args)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".ruyi")]


def test_a_broken_config_is_one_error_line(tiny_checkpoint, tmp_path, capsys):
    # diffusers' own errors on a bad config value (here NotImplementedError) were a traceback.
    import shutil

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    config = checkpoint / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"scaled_linear"', '"bogus"'))
    with pytest.raises(SystemExit) as e:
        _converter().main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "new" / "deeper" / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "could not be loaded: NotImplementedError: " in err[-1] and "bogus" in err[-1]
    assert not (tmp_path / "new").exists()  # the output's folders are made only to save


def test_an_output_that_cannot_be_written_is_refused_before_loading(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    # Root may write anywhere by its permissions, but not into /sys: the folder is made once before the load.
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    loads = []
    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    monkeypatch.setattr(RuyiImageToVideoPipeline, "from_pretrained", lambda *a, **k: loads.append(a))
    with pytest.raises(SystemExit) as e:
        _converter().main(["--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "out")])
    assert e.value.code == 2 and "cannot be written: Permission denied in " in capsys.readouterr().err
    assert not loads


def test_a_failed_save_is_one_line_and_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RuyiImageToVideoPipeline, "save_pretrained", full)
    with pytest.raises(SystemExit, match=r"--output '.*out' could not be written: \[Errno 28\] No space left"):
        _converter().main(["--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "out")])
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_safetensors_is_one_line_too(tiny_checkpoint, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def full(self, *args, **kwargs):  # what safetensors raises there: not an OSError
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(RuyiImageToVideoPipeline, "save_pretrained", full)
    with pytest.raises(SystemExit, match=r"could not be written: Error while serializing: .*No space left"):
        _converter().main(["--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "out")])
    assert list(tmp_path.iterdir()) == []


def test_a_failed_overwrite_keeps_the_old_output_whole(tiny_checkpoint, tmp_path, monkeypatch):
    # The old output was deleted before the new one was moved in: a failure between them left neither.
    import os

    out = tmp_path / "out"
    _converter().main(["--checkpoint", str(tiny_checkpoint), "--output", str(out)])
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    real_replace = os.replace

    def refused(source, target):
        if str(target) == str(out) and ".ruyi-convert-" in str(source) and "-old-" not in str(source):
            raise OSError(1, "Operation not permitted")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(SystemExit, match="could not be written: .*Operation not permitted"):
        _converter().main(["--checkpoint", str(tiny_checkpoint), "--output", str(out), "--overwrite"])
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


@pytest.mark.parametrize("target", ["cwd", "parent of cwd", "checkpoint", "inside the checkpoint"])
def test_overwrite_never_deletes_the_working_folder_or_the_checkpoint(tiny_checkpoint, tmp_path, monkeypatch, target):
    # `--output . --overwrite` emptied the working folder (the rename then failed).
    import shutil

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("keep")
    monkeypatch.chdir(work)
    output = {"cwd": ".", "parent of cwd": str(tmp_path), "checkpoint": str(checkpoint)}.get(target)
    # Inside: its transformer/ was replaced by a converted pipeline.
    output = output or str(checkpoint / "transformer")
    with pytest.raises(SystemExit) as e:
        _converter().main(["--checkpoint", str(checkpoint), "--output", output, "--overwrite"])
    assert e.value.code == 2
    assert (work / "precious.txt").read_text() == "keep" and (checkpoint / "transformer" / "config.json").is_file()
    assert sorted(p.name for p in checkpoint.rglob("*")) == sorted(p.name for p in tiny_checkpoint.rglob("*"))
