"""The live-tensor-bytes tracker behind `estimate_memory.py`, in a module that needs only torch: the original's driver
(`original_driver.py estimate-transformer-memory`) runs it in the original's own environment, so both
implementations are counted by the same code."""

from typing import Any, Callable, Dict


class LiveBytes:
    """Tracks the bytes of every storage an op allocates on ``device`` while it is alive (a `TorchDispatchMode`);
    ``peak`` is the largest total. A storage an op returns that was among its inputs (a view, an in-place result) is
    not new; the storages that existed before (weights, the phase's inputs) are never counted. Tensors moved to
    another device (offloaded) stop counting when their copy on ``device`` dies."""

    def __init__(self, device: str = "cpu"):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker._record(args, kwargs, out)
                return out

        self.mode = _Mode()
        self.device = device
        self.live: Dict[int, int] = {}
        self.refs: Dict[int, Any] = {}
        self.current = self.peak = 0

    @staticmethod
    def _storages(tree):
        import torch
        from torch.utils._pytree import tree_leaves

        # The tensor's device, not its storage's: a fake tensor's storage is on the meta device.
        return [(t.device, t.untyped_storage()) for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]

    def _record(self, args, kwargs, out) -> None:
        import weakref

        inputs = {st._cdata for _, st in self._storages((args, kwargs))}
        for device, storage in self._storages(out):
            key = storage._cdata
            if device.type != self.device or key in inputs or key in self.live:
                continue
            self.live[key] = storage.nbytes()
            self.refs[key] = weakref.ref(storage, lambda _, key=key: self._free(key))
            self.current += self.live[key]
            self.peak = max(self.peak, self.current)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)
        self.refs.pop(key, None)

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def phase_peak(run: Callable[[], Any], device: str = "cpu") -> int:
    """Bytes of the largest set of live tensors allocated on ``device`` while ``run()`` executes (its result
    included)."""
    import torch

    with torch.no_grad(), LiveBytes(device) as tracker:
        result = run()
    del result
    return tracker.peak
