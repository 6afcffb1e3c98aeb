"""scripts/parity_sweep.py without the original (CI has none): its cases, its checkpoints, and this package's side."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
from collections import Counter

import pytest


REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "parity_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("ruyi_parity_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_sweep(*args: str) -> list:
    """Runs the sweep without the original (as CI must) and returns its output lines; it must succeed."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()


def test_cases_are_fixed_by_their_seed_and_cover_the_settings(sweep):
    assert sweep.draw_case(7) == sweep.draw_case(7) != sweep.draw_case(8)
    cases = [sweep.draw_case(seed) for seed in range(60)]
    assert set(Counter(c["sampler"] for c in cases)) == set(sweep.SAMPLERS)
    assert {c["transformer"]["num_layers"] for c in cases} == {1, 2, 4, 6}
    assert {c["frames"] for c in cases} == {1, 8, 16, 24, 32}
    assert any(c["end_frames"] for c in cases) and any(len(c["images"]) == 3 for c in cases)
    for name in ("lora", "teacache", "enhance"):
        assert 0 < sum(c[name] is not None for c in cases) < len(cases), name
    # PNDM's warm-up needs 4 steps; the other samplers also get 2 and 3.
    assert all(c["steps"] >= 4 for c in cases if c["sampler"] == "PNDM")
    assert {c["template"] for c in cases} == set(sweep.TEMPLATES)


def test_cases_run_on_this_packages_side(tmp_path):
    # Seed 76: the published format, 16 frames at 48x64, DPM++, a 4-block transformer. Seed 77: the first goldens'
    # format (cache VAE), 8 frames at 48x48, Euler, 6 steps, a 6-block transformer, TeaCache.
    lines = _run_sweep("--seeds", "76:78", "--keep", str(tmp_path))
    assert lines[0].startswith("76 ran (1, 3, 16, 48, 64)") and "| published 4x" in lines[0], lines
    assert lines[1].startswith("77 ran (1, 3, 8, 48, 48)") and "| cache 6x" in lines[1], lines
    assert lines[-1] == "summary: 2 ran"
    assert (tmp_path / "case_76" / "model_index.json").is_file()  # the published layout
    assert not (tmp_path / "case_77" / "model_index.json").exists()  # the original hub layout of the first goldens
    for case in ("case_76", "case_77"):
        assert (tmp_path / case / "case.json").is_file()
        assert sorted(p.name for p in (tmp_path / case / "transformer").iterdir()) == [
            "config.json",
            "diffusion_pytorch_model.safetensors",
        ]
    with open(tmp_path / "case_77" / "vae" / "config.json") as f:
        assert json.load(f)["cache_compression_vae"]


def test_verdicts_per_dtype(sweep):
    assert sweep.judge(1e-4, "float32") == "ok" and sweep.judge(1.1e-4, "float32") == "DIFF"
    # bfloat16 is judged bit for bit: a difference far below the float32 tolerance is still one.
    assert sweep.judge(0.0, "bfloat16") == "ok" and sweep.judge(1e-7, "bfloat16") == "DIFF"


def test_bfloat16_cases_run_on_this_packages_side():
    lines = _run_sweep("--seeds", "77:78", "--dtype", "bfloat16")
    assert lines[0].startswith("77 ran (1, 3, 8, 48, 48)") and lines[-1] == "summary: 1 ran", lines


def test_reference_and_python_go_together():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--reference", "/nowhere"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "--reference and --python together" in done.stderr


def test_vae_cases_cover_the_architectures(sweep):
    assert sweep.draw_vae_case(3) == sweep.draw_vae_case(3) != sweep.draw_vae_case(4)
    cases = [sweep.draw_vae_case(seed) for seed in range(80)]
    configs = [c["config"] for c in cases]
    assert {len(c["block_out_channels"]) for c in configs} == {3, 4}
    assert {c["slice_compression_vae"] for c in configs} == {True, False}
    assert {c["mid_block_attention_type"] for c in configs} == {"3d", "spatial"}
    assert {c["layers_per_block"] for c in configs} == {1, 2, 3}
    assert {c["use_tiling"] for c in configs} == {True, False}
    assert any(c["constant_from"] for c in cases) and any(c["constant_from"] is None for c in cases)
    # Both variants get counts that are not whole chunks (odd, uneven), as the original takes them.
    for variant in (True, False):
        drawn = [c for c in cases if c["config"]["slice_compression_vae"] == variant]
        assert any(c["encode_input"][2] % 8 not in (0, 1) for c in drawn)
        assert any(c["decode_input"][2] % 2 == 1 and c["decode_input"][2] > 1 for c in drawn)


def test_a_vae_case_runs_on_this_packages_side(tmp_path):
    # Seed 3: the slice variant, 3 stages, 25 frames (constant after the first ones) through the original's 32 px
    # tiles.
    lines = _run_sweep("--vae", "--seeds", "3:4", "--keep", str(tmp_path))
    assert lines[0].startswith("3 ran | encode: ran (2, 16, 13, 9, 8) | decode: ran (1, 3, 17, 44, 12)"), lines
    assert "(2, 3, 25, 36, 32) masked" in lines[0]
    assert lines[-1] == "summary: 1 ran"
    # Written in the original's layout: its attention output projection is a bare `to_out`.
    from safetensors import safe_open

    with safe_open(str(tmp_path / "vae_3" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert "encoder.mid_block.attentions.0.to_out.weight" in keys and not any(".to_out.0." in k for k in keys)


def _run_sweep_against(reference: pathlib.Path, seeds: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, str(SCRIPT), "--seeds", seeds]
    command += ["--reference", str(reference), "--python", sys.executable]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def test_an_original_that_cannot_be_imported_is_an_error_not_a_refusal(tmp_path):
    # A broken environment for the original (here: no checkout) says nothing about the case: the sweep must not
    # count it as the original failing on the case (which turns this package's refusals into "refused" verdicts).
    done = _run_sweep_against(tmp_path, "76:77")
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("76 ERROR (the original could not be imported: ModuleNotFoundError"), done.stdout
    assert lines[-1] == "summary: 1 ERROR" and done.returncode != 0


def test_a_lora_case_whose_original_fails_before_writing_the_lora_is_skipped(tmp_path):
    # Seed 1 draws a LoRA, which the original writes once its pipeline is built. An original that fails while
    # loading leaves no LoRA to load on this package's side: skipped with the original's error, not a crash.
    for module in ("models/autoencoder_magvit", "models/transformer3d", "pipeline/pipeline_ruyi_inpaint"):
        path = tmp_path / "ruyi" / f"{module}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    (tmp_path / "ruyi" / "models" / "autoencoder_magvit.py").write_text(
        "class AutoencoderKLMagvit:\n"
        "    @classmethod\n"
        "    def from_pretrained(cls, *args, **kwargs):\n"
        "        raise RuntimeError('cannot load this VAE')\n"
    )
    done = _run_sweep_against(tmp_path, "1:2")
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("1 skipped (the original failed before writing the LoRA: RuntimeError: cannot load")
    assert lines[-1] == "summary: 1 skipped" and done.returncode == 0, done.stderr[-2000:]
