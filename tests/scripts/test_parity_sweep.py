"""scripts/parity_sweep.py without the original (CI has none): its cases, its checkpoints, and this package's side."""

import importlib.util
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


def test_a_case_runs_on_this_packages_side(tmp_path):
    # Seed 77: 8 frames at 48x48, Euler, 6 steps, a 6-block transformer, TeaCache.
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--seeds", "77:78", "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("77 ran (1, 3, 8, 48, 48)") and "| 6x" in lines[0], lines
    assert lines[-1] == "summary: 1 ran"
    case = tmp_path / "case_77"
    assert (case / "case.json").is_file() and (case / "model_index.json").is_file()
    assert sorted(p.name for p in (case / "transformer").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]


def test_reference_and_python_go_together():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--reference", "/nowhere"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "--reference and --python together" in done.stderr
