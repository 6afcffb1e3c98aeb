# Copyright 2025 The diffusers-ruyi authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Lets diffusers find this package's classes by name, so saved folders load with `DiffusionPipeline.from_pretrained`.

diffusers resolves a folder's `_class_name` (`model_index.json` for `DiffusionPipeline`, `config.json` for `AutoModel`)
with `getattr(diffusers, name)`, and offers nothing else for installed packages: a list `_class_name` only works with a
`.py` file in the folder and `trust_remote_code=True`. So `import diffusers_ruyi` gives the `diffusers` module a PEP 562
`__getattr__` that answers the names below from this package (lazily: nothing heavy is imported until a name is asked
for, and diffusers' own names still go to its lazy loader). When diffusers is not imported yet, this happens right after
it is, so the import order does not matter and `import diffusers_ruyi` stays cheap.
"""

import importlib.util
import sys
from typing import Any, Callable, Optional


EXPOSED_NAMES = ("RuyiImageToVideoPipeline", "RuyiTransformer3DModel", "AutoencoderKLRuyiCausal3D")


def _make_getattr(previous: Optional[Callable[[str], Any]], module) -> Callable[[str], Any]:
    def __getattr__(name: str) -> Any:
        if name in EXPOSED_NAMES:
            import diffusers_ruyi

            value = getattr(diffusers_ruyi, name)
            setattr(module, name, value)  # later look-ups skip this function
            return value
        if previous is not None:
            return previous(name)
        raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")

    __getattr__._diffusers_ruyi = True
    return __getattr__


def _install(module) -> None:
    previous = module.__dict__.get("__getattr__")
    if not getattr(previous, "_diffusers_ruyi", False):
        module.__getattr__ = _make_getattr(previous, module)


class _InstallAfterDiffusersImport:
    """A `sys.meta_path` finder that finds nothing itself: wraps the real `diffusers` loader so that `_install` runs
    once the module is executed. It stays in place until then: an availability probe (`importlib.util.find_spec`, as
    peft and transformers make) asks for a spec that is never executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "diffusers":
            return None
        # The real finders answer; this one steps aside meanwhile, or it would be asked again.
        index = sys.meta_path.index(self) if self in sys.meta_path else None
        if index is not None:
            sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            if index is not None:
                sys.meta_path.insert(index, self)
        loader = getattr(spec, "loader", None)
        if loader is not None and hasattr(loader, "exec_module"):
            exec_module = loader.exec_module

            def exec_module_and_install(module):
                exec_module(module)
                # diffusers replaces itself in `sys.modules` with its lazy module while executing.
                _install(sys.modules.get(fullname, module))
                if self in sys.meta_path:  # done
                    sys.meta_path.remove(self)

            loader.exec_module = exec_module_and_install
        return spec


def register_with_diffusers() -> None:
    """Makes `getattr(diffusers, name)` find [`EXPOSED_NAMES`] now, or as soon as diffusers is imported."""
    module = sys.modules.get("diffusers")
    if module is not None:
        _install(module)
    elif not any(isinstance(finder, _InstallAfterDiffusersImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _InstallAfterDiffusersImport())
