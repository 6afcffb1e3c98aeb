"""The examples as a first-time user runs them: a missing output folder is created, a bad one fails before the model
is loaded, and every script (the LoRA ones included) runs with `tiny-random`."""

import stat

import pytest
from _helpers import EXAMPLES, ORIGINAL_LORA, ROOT, load_example, load_script, read_frames


START = str(EXAMPLES / "assets" / "start.png")
LORA = ORIGINAL_LORA
SMALL = ["--model", "tiny-random", "--num-frames", "8", "--steps", "1", "--image", START]
SCRIPTS = {
    "image_to_video": ["--base-resolution", "64"],
    "start_end_frames": ["--height", "32", "--width", "48"],
    "camera_control_grid": ["--height", "32", "--width", "48", "--cameras", "left", "--motions", "1"],
    "lora_inference": ["--base-resolution", "64", "--lora", str(LORA)],
    "low_memory": ["--base-resolution", "64", "--offload", "none"],
}


@pytest.mark.parametrize("name", ["image_to_video", "lora_inference"])
def test_missing_output_folders_are_created(tmp_path, name):
    out = tmp_path / "outputs" / "nested" / f"{name}.mp4"
    assert load_example(name).main([*SMALL, *SCRIPTS[name], "--output", str(out)]) == str(out)
    assert len(read_frames(out)) == 8


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_bad_output_folder_fails_before_loading(tmp_path, monkeypatch, capsys, name):
    module = load_example(name)

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(module, "load_pipeline", must_not_load)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(SystemExit) as exit_info:  # one line, as ruyi-i2v says it (it was an OSError's traceback)
        module.main([*SMALL, *SCRIPTS[name], "--output", str(tmp_path / "blocker" / "video.mp4")])
    assert exit_info.value.code == 2
    assert "blocker' is a file, not a folder" in capsys.readouterr().err


def test_lora_inference_docstring_names_a_lora_that_fits_tiny_random():
    doc = load_example("lora_inference").__doc__
    assert "--model tiny-random" in doc and str(LORA.relative_to(ROOT)) in doc


def test_converter_output_gets_the_usual_permissions(tiny_checkpoint, tmp_path):
    module = load_script(ROOT / "scripts" / "convert_ruyi_to_diffusers.py", "convert")
    out = tmp_path / "converted"
    module.main(["--checkpoint", str(tiny_checkpoint), "--output", str(out)])
    (tmp_path / "reference").mkdir()  # what a plain mkdir gives under this umask
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE((tmp_path / "reference").stat().st_mode)


def test_converter_bad_output_fails_before_loading(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    module = load_script(ROOT / "scripts" / "convert_ruyi_to_diffusers.py", "convert")

    def must_not_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the output was checked")

    monkeypatch.setattr(module.RuyiImageToVideoPipeline, "from_pretrained", must_not_load)
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(SystemExit) as e:
        module.main(["--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "blocker" / "converted")])
    assert e.value.code == 2
    assert "--output" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        module.main(["--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "blocker"), "--overwrite"])
    assert "is a file" in capsys.readouterr().err
