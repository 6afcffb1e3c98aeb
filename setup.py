"""Packaging for diffusers-ruyi: Ruyi-Mini-7B image-to-video as a diffusers plugin."""

from setuptools import find_packages, setup


_deps_core = [
    # torch is deliberately not pinned above what the local CPU wheel offers; install it first. 2.6 is accelerate's
    # floor (pip would otherwise upgrade an older torch for it) and the oldest build the suite was run on.
    "torch>=2.6",
    # The tested range: the package builds on diffusers internals (hook registry, attention dispatch, loader helpers)
    # that change between minor releases.
    "diffusers>=0.42,<0.43",
    "transformers>=4.46",
    "accelerate>=1.1",
    "peft>=0.18",  # peft.tuners.tuners_utils.cast_adapter_dtype
    "safetensors>=0.4",
    "huggingface_hub>=0.26",
    "numpy",
    "pillow",
    "imageio>=2.30",
    "imageio-ffmpeg>=0.5",
    "tqdm",
]
# torchao: the int8 `quantization_config` test; it declares no torch requirement, so it never pulls a CUDA torch.
_deps_test = ["pytest>=8", "hypothesis>=6", "ruff>=0.9", "torchao>=0.15"]
_deps_train = ["datasets", "tensorboard"]
_deps_docs = ["mkdocs>=1.6"]
# Mutation testing (scripts/mutation.py): a developer tool, not installed by CI.
_deps_mutation = ["cosmic-ray>=8.4"]

setup(
    name="diffusers-ruyi",
    version="0.1.0",
    description="Ruyi-Mini-7B image-to-video (CreateAI) for Hugging Face diffusers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["diffusers_ruyi", "diffusers_ruyi.*"]),
    install_requires=_deps_core,
    extras_require={
        "test": _deps_test + _deps_docs,
        "train": _deps_train,
        "docs": _deps_docs,
        "dev": _deps_test + _deps_train + _deps_docs + _deps_mutation,
    },
    entry_points={"console_scripts": ["ruyi-i2v=diffusers_ruyi.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
