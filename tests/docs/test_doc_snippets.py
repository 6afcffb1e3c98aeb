"""The Python snippets of README.md and docs/ run, page by page, on the tiny model: a wrong snippet fails CI.

How a page runs:

* its ```python / ```py blocks run in order in one namespace (a page reads like a notebook: later snippets use the
  `pipe` of earlier ones), in a temporary folder that holds `start.jpg`, `start.png` and `end.jpg`;
* the hub id `IamCreateAI/Ruyi-Mini-7B` is replaced by the tiny checkpoint in the original layout
  (`tests/fixtures/golden/Ruyi-tiny-random`, which has the same sub-folders as the real one);
* pipeline calls keep their arguments but are shrunk after checking them (8 frames, or the count itself up to 16; at
  most 2 steps; 32 x 48 pixels above 64 x 64, or `base_resolution=64`), so a page takes seconds;
* without a GPU, `.to("cuda")` becomes `.to("cpu")` and the CPU-offload methods only check their arguments;
* `PRELUDES` define the placeholders that the prose introduces (`image`, the LoRA files a snippet names, ...) and
  `SUBSTITUTIONS` shrink sizes written in the code; each substitution must still match the page;
* a block preceded by `<!-- doc-test: skip REASON -->` does not run (multi-process launches), one preceded by
  `<!-- doc-test: needs-gpu -->` runs only where CUDA is available, and one preceded by
  `<!-- doc-test: needs-module NAME -->` only where the optional module NAME is installed (torchao, which follows torch
  releases closely). The comments are invisible in the rendered docs.
"""

import importlib.util
import inspect
import pathlib
import re
import shutil

import pytest
import torch
from _helpers import hub_cache_snapshot


ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "golden" / "Ruyi-tiny-random"
LORA = ROOT / "tests" / "fixtures" / "lora" / "ruyi_lora_original.safetensors"
HUB_ID = "IamCreateAI/Ruyi-Mini-7B"
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
_MARKER = re.compile(r"<!--\s*doc-test:\s*(?P<kind>[\w-]+)(?P<reason>.*?)-->")
_HAS_GPU = torch.cuda.is_available()


def python_blocks(page: str):
    """(line of the first code line, code, marker or None) of each Python block of ``page``; the marker is its kind,
    followed by the module's name for `needs-module`."""
    text = (ROOT / page).read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        if match.group("lang") not in ("python", "py"):
            continue
        before = [line for line in text[: match.start()].splitlines() if line.strip()]
        marker = _MARKER.search(before[-1]) if before else None
        indent = match.group("indent")
        code = "\n".join(line[len(indent) :] for line in match.group("body").splitlines())
        first_line = text[: match.start("body")].count("\n") + 1
        kind = marker.group("kind") if marker else None
        if kind == "needs-module":
            kind = f"{kind} {marker.group('reason').strip()}"
        blocks.append((first_line, code, kind))
    return blocks


def _lora_files():
    """Every LoRA file name the LoRA page uses, as copies of the test LoRA (made for the tiny architecture)."""
    for name in (
        "path/to/lora_folder/pytorch_lora_weights.safetensors",
        "path/to/my_lora.safetensors",
        "motion_lora.safetensors",
        "style_lora.safetensors",
        "a.safetensors",
        "b.safetensors",
    ):
        pathlib.Path(name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LORA, name)


_IMAGE = "import PIL.Image\nimage = PIL.Image.open('start.jpg')\n"

# Code run before a page's first block: the placeholders its prose introduces.
PRELUDES = {
    "docs/pipeline.md": _IMAGE
    + f"path_or_repo_id = {str(TINY)!r}\nstart_pil = image\nend_pil_or_None = PIL.Image.open('end.jpg')\n",
    "docs/lora.md": _IMAGE,
    # The frames and generators the page's prose names, and the pipeline its first block calls.
    "docs/long_video.md": _IMAGE
    + "from diffusers_ruyi import RuyiImageToVideoPipeline\n"
    + f"pipe = RuyiImageToVideoPipeline.from_pretrained({str(TINY)!r})\n"
    + "start = f0 = f1 = f2 = g0 = image\nend = e0 = e1 = PIL.Image.open('end.jpg')\n"
    + "gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)\n",
    "docs/memory_and_speed.md": _IMAGE,
    "docs/conversion.md": "from diffusers_ruyi import RuyiImageToVideoPipeline as _P\n"
    f"_P.from_pretrained({str(TINY)!r}).save_pretrained('Ruyi-Mini-7B-diffusers')\n",
    # The forward pass's inputs: the golden test inputs of the tiny transformer, in the dtype the page loads it in.
    "docs/api/transformer_ruyi.md": "from safetensors.torch import load_file as _load\n"
    f"_inputs = _load({str(ROOT / 'tests' / 'fixtures' / 'golden' / 'transformer_forward.safetensors')!r})\n"
    "for _name, _value in _inputs.items():\n"
    "    globals()[_name] = _value.to(torch.bfloat16) if _value.is_floating_point() else _value\n",
}

# (page, text in a block, replacement): sizes that are right for the real model but slow on a CPU.
SUBSTITUTIONS = [
    ("docs/api/autoencoder_kl_ruyi.md", "torch.rand(1, 3, 24, 512, 512)", "torch.rand(1, 3, 8, 32, 32)"),
    # Segments of 16 frames with 5 of context instead of 120: a 16-frame video continued by 11, three segments.
    ("docs/long_video.md", "num_frames=120, output_type", "num_frames=16, output_type"),
    ("docs/long_video.md", "extend_video(video, 96,", "extend_video(video, 11,"),
    ("docs/long_video.md", "assert (longer[:120] == video)", "assert (longer[:16] == video)"),
    ("docs/long_video.md", "350,  # 120 + 115 + 115", "38, segment_frames=16,  # 16 + 11 + 11"),
]


@pytest.fixture
def doc_env(tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    from diffusers_ruyi import RuyiImageToVideoPipeline

    monkeypatch.chdir(tmp_path)
    for name, asset in (("start.jpg", "start.png"), ("start.png", "start.png"), ("end.jpg", "end.png")):
        shutil.copy(ROOT / "examples" / "assets" / asset, tmp_path / name)

    original_call = RuyiImageToVideoPipeline.__call__

    def small_call(self, *args, **kwargs):
        num_frames = kwargs.get("num_frames", 120)
        self.vae.num_latent_frames(num_frames)  # the page's own values must be valid before they are shrunk
        height, width = kwargs.get("height"), kwargs.get("width")
        if height is not None and width is not None:
            if height % 16 or width % 16:
                raise ValueError(f"height and width must be multiples of 16, got {height} x {width}")
            if height * width > 64 * 64:  # sizes chosen by the long-video helpers from a shrunk video stay
                kwargs.update(height=32, width=48)
        elif height is None and width is None:
            kwargs["base_resolution"] = 64
        # Counts up to 16 are the long-video page's shrunk segments: the helpers check the frames they get back.
        kwargs["num_frames"] = num_frames if num_frames <= 16 else 8
        kwargs["num_inference_steps"] = min(kwargs.get("num_inference_steps", 25), 2)
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(RuyiImageToVideoPipeline, "__call__", small_call)

    if not _HAS_GPU:
        for method in ("enable_model_cpu_offload", "enable_sequential_cpu_offload"):
            signature = inspect.signature(getattr(DiffusionPipeline, method))

            def check_only(self, *args, _signature=signature, **kwargs):
                _signature.bind(self, *args, **kwargs)  # a wrong argument still fails

            monkeypatch.setattr(DiffusionPipeline, method, check_only)

    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    hub_cache_snapshot(cache, "user/ruyi-lora", LORA, "x.safetensors")  # the LoRA page's example repository
    hub_cache_snapshot(cache, HUB_ID, TINY)  # file URLs into the published repository (`from_single_file`)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    _lora_files()
    return tmp_path


def _prepare(page: str, code: str) -> str:
    code = code.replace(f'"{HUB_ID}"', repr(str(TINY)))
    if not _HAS_GPU:
        code = code.replace('.to("cuda")', '.to("cpu")')
    for where, old, new in SUBSTITUTIONS:
        if where == page:
            code = code.replace(old, new)
    return code


def test_every_substitution_still_matches():
    for page, old, _ in SUBSTITUTIONS:
        assert any(old in code for _, code, _ in python_blocks(page)), f"{page} no longer contains {old!r}"


def test_mkdocs_links_no_other_repository():
    config = (ROOT / "mkdocs.yml").read_text()
    assert "IamCreateAI/Ruyi-Models" not in config  # the original implementation is not this project's repository


def test_readme_says_which_torch_to_install():
    readme = (ROOT / "README.md").read_text()
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in readme  # CPU only
    assert "is the CPU build" not in readme  # plain PyPI gives the CUDA build on Linux
    assert "pytorch.org/get-started/locally" in readme  # GPU users


def test_markers_are_known():
    for page in PAGES:
        for line, _, kind in python_blocks(page):
            known = kind in (None, "skip", "needs-gpu") or re.fullmatch(r"needs-module [\w.]+", kind)
            assert known, f"{page}:{line}: unknown doc-test marker {kind!r}"


def test_needs_module_skips_only_without_the_module():
    assert not _missing_module("needs-module pytest") and _missing_module("needs-module no_such_module_here")
    assert not _missing_module(None) and not _missing_module("needs-gpu")
    assert any(kind == "needs-module torchao" for _, _, kind in python_blocks("docs/conversion.md"))


def _missing_module(marker) -> bool:
    return bool(marker and marker.startswith("needs-module ")) and importlib.util.find_spec(marker.split()[1]) is None


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)])
def test_page_snippets_run(page, doc_env):
    namespace = {"__name__": "__doc_snippets__"}
    if page in PRELUDES:
        exec(compile("import torch\n" + PRELUDES[page], f"<prelude of {page}>", "exec"), namespace)
    ran = 0
    for line, code, marker in python_blocks(page):
        if marker == "skip" or (marker == "needs-gpu" and not _HAS_GPU) or _missing_module(marker):
            continue
        # Padding with newlines makes tracebacks point at the page's own line numbers.
        source = "\n" * (line - 1) + _prepare(page, code)
        exec(compile(source, str(ROOT / page), "exec"), namespace)
        ran += 1
    assert ran, f"{page}: every block is skipped"
