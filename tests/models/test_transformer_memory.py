"""The transformer's memory-lean inference steps (RoPE and the float32 LayerNorms in chunks of tokens, the
feed-forward activation in place) give the same numbers as the plain ones and lower the peak; training gets the same
gradients; `enable_forward_chunking` follows diffusers' convention."""

import math
import pathlib
import sys

import pytest
import torch
import torch.nn.functional as F
from _helpers import tiny_transformer, transformer_inputs
from diffusers.models.activations import GELU

import diffusers_ruyi.models.transformer_ruyi as transformer_module
from diffusers_ruyi.models.transformer_ruyi import RuyiFP32LayerNorm, RuyiGELU, apply_rotary_emb_lean


ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import estimate_memory  # noqa: E402


@pytest.fixture
def small_chunks(monkeypatch):
    """Sets the chunk budget (elements) of the lean steps; the tiny model's tensors are then many chunks long."""

    def set_budget(elements: int) -> None:
        monkeypatch.setattr(transformer_module, "_CHUNK_ELEMENTS", elements)

    return set_budget


def _forward(model, dtype, **kwargs):
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in transformer_inputs(**kwargs).items()}
    return model.to(dtype)(timestep=torch.full((2,), 500.0, dtype=dtype), **inputs, return_dict=False)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("frames", [1, 4])  # one frame: the block input keeps the patch embedding's transposed layout
def test_lean_steps_give_the_plain_outputs_bit_for_bit(small_chunks, dtype, frames):
    model = tiny_transformer()
    with torch.no_grad():
        small_chunks(2**40)  # never chunked
        plain = _forward(model, dtype, frames=frames, height=8, width=14)
        for budget in (1000, 333):  # chunks of several tokens
            small_chunks(budget)
            assert torch.equal(_forward(model, dtype, frames=frames, height=8, width=14), plain), budget


def _peak(run) -> int:
    return estimate_memory.phase_peak(run)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rotary_embedding_in_chunks_keeps_one_output_and_chunk_sized_temporaries(small_chunks, dtype):
    from diffusers.models.embeddings import apply_rotary_emb

    batch, tokens, heads, head_dim = 2, 64, 4, 8
    x = torch.randn(batch, tokens, heads, head_dim, dtype=dtype)
    cos, sin = torch.randn(tokens, head_dim), torch.randn(tokens, head_dim)
    with torch.no_grad():
        diffusers_peak = _peak(lambda: apply_rotary_emb(x, (cos, sin), sequence_dim=1))
        small_chunks(2**40)
        plain_peak = _peak(lambda: apply_rotary_emb_lean(x, (cos, sin)))
        small_chunks(x.numel() // 8)  # 8 chunks
        lean_peak = _peak(lambda: apply_rotary_emb_lean(x, (cos, sin)))

    element = x.element_size()
    # diffusers: two or three float32 temporaries and its rotated copy. One pass: the output, the rotated products
    # and, from bfloat16, the float32 copy (multiplied in place). Chunks: the output, and those of one chunk.
    temporaries = 4 if dtype == torch.float32 else 2 * 4
    assert diffusers_peak >= x.numel() * (temporaries + 4 + element)
    assert plain_peak <= x.numel() * (temporaries + element) * 1.05
    assert lean_peak <= x.numel() * element + x.numel() // 8 * (temporaries + element) * 1.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("budget", [2**40, 300])  # one pass; chunks of a few tokens
@pytest.mark.parametrize("mixed", [False, True])  # True: CUDA's path (half-precision inputs read directly)
def test_rotary_embedding_gives_diffusers_numbers_bit_for_bit(small_chunks, monkeypatch, dtype, budget, mixed):
    """The inference RoPE (fewer passes, negated sine table) against diffusers' `apply_rotary_emb` itself, with
    tables whose pairs differ (so a swapped or unsigned half shows), on a transposed input."""
    from diffusers.models.embeddings import apply_rotary_emb

    monkeypatch.setattr(transformer_module, "_mixed_precision_is_fast", lambda x: mixed and x.dtype != torch.float32)

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 24, 16, generator=generator).to(dtype).transpose(1, 2)  # (batch, tokens, heads, dim)
    cos, sin = torch.randn(24, 16, generator=generator), torch.randn(24, 16, generator=generator)
    expected = apply_rotary_emb(x, (cos, sin), sequence_dim=1)
    small_chunks(budget)
    with torch.no_grad():
        out = apply_rotary_emb_lean(x, (cos, sin))
    assert out.dtype == dtype and out.is_contiguous()
    assert torch.equal(out, expected)
    # With gradients it is diffusers' function, so autograd sees its ops.
    x.requires_grad_(True)
    assert torch.equal(apply_rotary_emb_lean(x, (cos, sin)), expected)


def test_float32_layer_norm_in_chunks_keeps_one_output(small_chunks):
    norm = RuyiFP32LayerNorm(32, eps=1e-6).to(torch.bfloat16)
    x = torch.randn(2, 256, 32, dtype=torch.bfloat16)
    small_chunks(2**40)
    plain_peak = _peak(lambda: norm(x))
    small_chunks(x.numel() // 8)
    lean_peak = _peak(lambda: norm(x))
    assert plain_peak >= x.numel() * (4 + 4)  # the float32 input and output
    assert lean_peak <= x.numel() * 2 + x.numel() // 8 * (4 + 4) * 1.5


def test_gelu_applied_in_place():
    act = RuyiGELU(GELU(16, 64, approximate="tanh"))
    x = torch.randn(2, 128, 16)
    inner = x.numel() * 4 * 4  # the projection's output, in bytes
    expected = F.gelu(act.proj(x), approximate="tanh")
    with torch.no_grad():
        assert torch.equal(act(x), expected)
        peak = _peak(lambda: act(x))
    assert peak == inner  # the projection's output only: no second tensor for the activation
    # Training: the same gradients as diffusers' out-of-place activation.
    out = act(x)
    assert torch.equal(out, expected)
    grads = torch.autograd.grad(out.square().sum(), list(act.parameters()))
    plain = torch.autograd.grad(F.gelu(act.proj(x), approximate="tanh").square().sum(), list(act.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(grads, plain))


def test_published_activation_is_the_lean_one_and_keeps_diffusers_parameter_names():
    model = tiny_transformer()
    assert all(type(block.ff.net[0]) is RuyiGELU for block in model.blocks)
    assert "blocks.0.ff.net.0.proj.weight" in model.state_dict()


def test_lean_steps_lower_the_transformer_peak(small_chunks):
    # bfloat16, where the plain steps make float32 copies (in float32 `.float()` copies nothing).
    model = tiny_transformer()
    small_chunks(2**40)
    plain_peak = _peak(lambda: _forward(model, torch.bfloat16, frames=4, height=8, width=8))
    small_chunks(1024)
    lean_peak = _peak(lambda: _forward(model, torch.bfloat16, frames=4, height=8, width=8))
    assert lean_peak < 0.5 * plain_peak, (lean_peak, plain_peak)


def test_training_uses_the_plain_steps_and_gets_the_same_gradients(small_chunks):
    def loss_and_grads(budget):
        small_chunks(budget)
        model = tiny_transformer().train()
        loss = _forward(model, torch.float32).square().mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    loss, grads = loss_and_grads(2**40)
    lean_loss, lean_grads = loss_and_grads(333)
    assert torch.equal(lean_loss, loss)
    assert len(lean_grads) == len(grads) and all(torch.equal(a, b) for a, b in zip(lean_grads, grads))


# ------------------------------------------------------------------------------------------------------------------
# enable_forward_chunking
# ------------------------------------------------------------------------------------------------------------------


def _count_ff_calls(model):
    calls = []
    for block in model.blocks:
        block.ff.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    return calls


def test_forward_chunking_over_the_batch_is_exact():
    model = tiny_transformer()
    with torch.no_grad():
        plain = _forward(model, torch.float32)
        model.enable_forward_chunking()  # diffusers' default: one row of dim 0 at a time
        calls = _count_ff_calls(model)
        chunked = _forward(model, torch.float32)
    assert torch.equal(chunked, plain)
    assert len(calls) == 2 * len(model.blocks) and all(shape[0] == 1 for shape in calls)


@pytest.mark.parametrize("grad", [False, True])
def test_forward_chunking_over_tokens(grad):
    model = tiny_transformer()
    frames, height, width = 4, 4, 6
    tokens = frames * height * width // model.config.patch_size**2
    chunk = 5  # does not divide the token count: the last chunk is shorter
    with torch.set_grad_enabled(grad):
        plain = _forward(model, torch.float32, frames=frames, height=height, width=width)
        model.enable_forward_chunking(chunk_size=chunk, dim=1)
        calls = _count_ff_calls(model)
        chunked = _forward(model, torch.float32, frames=frames, height=height, width=width)
    torch.testing.assert_close(chunked, plain, rtol=0, atol=1e-5)
    assert len(calls) == math.ceil(tokens / chunk) * len(model.blocks)
    assert sorted({shape[1] for shape in calls}) == sorted({chunk, tokens % chunk})

    model.disable_forward_chunking()
    calls.clear()
    with torch.no_grad():
        _forward(model, torch.float32, frames=frames, height=height, width=width)
    assert len(calls) == len(model.blocks)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dim": 2}, "`dim` must be 0"),
        ({"chunk_size": 0}, "`chunk_size` must be a positive integer"),
        ({"chunk_size": 2.5}, "`chunk_size` must be a positive integer"),
        ({"chunk_size": True}, "`chunk_size` must be a positive integer"),
    ],
)
def test_forward_chunking_refuses_bad_arguments(kwargs, match):
    model = tiny_transformer()
    with pytest.raises(ValueError, match=match):
        model.enable_forward_chunking(**kwargs)
    assert all(block._chunk_size is None for block in model.blocks)


def test_forward_chunking_writes_the_chunks_into_one_output():
    from diffusers.models.attention import FeedForward

    ff = FeedForward(16, inner_dim=64, activation_fn="gelu-approximate")
    x = torch.randn(2, 128, 16)
    output_bytes = x.numel() * 4
    with torch.no_grad():
        plain = ff(x)
        chunked = transformer_module._feed_forward_in_chunks(ff, x, dim=1, chunk_size=4)
        peak = _peak(lambda: transformer_module._feed_forward_in_chunks(ff, x, dim=1, chunk_size=4))
    torch.testing.assert_close(chunked, plain, rtol=0, atol=1e-6)
    # The output and one 4-token chunk's inner tensors; concatenating would hold every chunk's output as well.
    assert peak <= 1.5 * output_bytes, peak


def test_chunks_are_rounded_once_by_the_copy_into_the_output(small_chunks):
    """The chunked steps hand each chunk to diffusers' function in float32 and let the copy into the output round it:
    no separate cast to bfloat16 (one more pass over the tensor than the plain step)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    casts = []

    class CastsToInputDtype(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default and out.dtype == torch.bfloat16:
                casts.append(func)
            return out

    x = torch.randn(2, 64, 4, 8, dtype=torch.bfloat16)
    cos, sin = torch.randn(64, 8), torch.randn(64, 8)
    norm = RuyiFP32LayerNorm(32, eps=1e-6).to(torch.bfloat16)
    tokens = torch.randn(2, 64, 32, dtype=torch.bfloat16)
    small_chunks(x.numel() // 4)
    with torch.no_grad(), CastsToInputDtype():
        apply_rotary_emb_lean(x, (cos, sin))
        norm(tokens)
    assert casts == []


@pytest.mark.parametrize("tokens, budget", [(64, 1000), (64, 1024), (50, 333), (5, 50), (7, 96), (1000, 4096)])
def test_token_chunks_stay_within_the_budget_and_are_as_few_as_it_allows(small_chunks, tokens, budget):
    # Kills a rounded-down chunk count in _chunk_tokens (models/transformer_ruyi.py): chunks then grow past the
    # budget, which only a memory peak would show. Chunks hold whole tokens (32 elements each here), so the fewest
    # within the budget are ceil(tokens / (budget // 32)), of equal length but the last.
    small_chunks(budget)
    x = torch.zeros(2, tokens, 16)
    with torch.no_grad():
        slices = list(transformer_module._token_slices(x))
    step = slices[0].stop
    assert [s.indices(tokens)[:2] for s in slices] == [(a, min(a + step, tokens)) for a in range(0, tokens, step)]
    assert all(x[:, s].numel() <= budget for s in slices)
    assert len(slices) == math.ceil(tokens / (budget // 32))
    assert tokens - (len(slices) - 1) * step > step - len(slices)  # the last chunk short by less than one per chunk


def test_a_token_larger_than_the_budget_is_a_chunk_of_its_own(small_chunks):
    small_chunks(20)
    with torch.no_grad():
        assert list(transformer_module._token_slices(torch.zeros(2, 3, 16))) == [slice(0, 1), slice(1, 2), slice(2, 3)]
