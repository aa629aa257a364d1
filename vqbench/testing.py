"""The quantizer conformance kit: the contract checks every built-in quantizer passes.

Use it from your own pytest suite::

    from vqbench.testing import check_quantizer

    def test_my_quantizer_conforms():
        check_quantizer(MyQuantizer)            # a class: built as MyQuantizer(num_codes=16, dim=8)
        check_quantizer("my-vq")                # or a registered name (registry defaults apply)

A quantizer may implement ``quantize(z)`` or ``forward(z)`` on flat (N, D) vectors (the base
class handles layouts either way); the checks are the same for both styles.

Each check fails with an ``AssertionError`` that says which part of the contract broke
(:class:`quantizers.base.Quantizer`): shapes and dtypes for (B, D, H, W) and (N, D) inputs,
integer code indices in range, a finite scalar loss and detached logging terms, ``probs``
that sum to one, gradients to the encoder and to every trainable quantizer parameter, a
codebook that moves under the runner's training step, deterministic eval whose outputs
are codebook rows, ``embed(indices)`` giving back the eval ``z_q``, a ``state_dict``
round trip into a fresh instance, bf16 autocast, and (where CUDA exists) device moves that
carry all state; tensors kept outside parameters and buffers are flagged on any machine.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import Tensor, nn

from quantizers.base import Quantizer, QuantizerOutput

__all__ = ["check_quantizer", "runner_optimizer", "runner_step"]


def runner_optimizer(q: Quantizer, extra: Any = (), lr: float = 1e-2) -> torch.optim.Optimizer:
    """AdamW as the trainer builds it (``vqbench.training.optim``): base lr × ``lr_scale``,
    per-group weight decay."""
    from .training import quantizer_param_groups

    weight_decay = 0.01  # AdamW's default, which this helper has always used
    groups = [{"params": list(extra)}] if extra else []
    return torch.optim.AdamW([*groups, *quantizer_param_groups(q, lr, weight_decay)], lr=lr, weight_decay=weight_decay)


def runner_step(q: Quantizer, z: Tensor, opt: torch.optim.Optimizer, step: int = 0, total: int = 10
                ) -> QuantizerOutput:
    """One training step in the runner's order: progress, forward, backward, step, hook."""
    q.set_progress(step / total)
    out = q(z)
    loss = out.z_q.float().pow(2).mean() + out.loss  # a stand-in task loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    q.after_optimizer_step()
    return out


def _factory(cls_or_name: type | str, num_codes: int, dim: int, kwargs: dict[str, Any]
             ) -> Callable[[], Quantizer]:
    if isinstance(cls_or_name, str):
        from .registry import build_quantizer

        return lambda: build_quantizer(cls_or_name, num_codes=num_codes, dim=dim, **kwargs)
    if not (isinstance(cls_or_name, type) and issubclass(cls_or_name, Quantizer)):
        raise TypeError(f"check_quantizer needs a Quantizer subclass or a registered name, got {cls_or_name!r}")
    return lambda: cls_or_name(num_codes=num_codes, dim=dim, **kwargs)


def _unregistered_tensors(module: nn.Module) -> list[str]:
    """Tensor attributes that are neither parameters nor buffers: ``.to()`` would leave them behind."""
    found = []
    for prefix, sub in module.named_modules():
        for key, value in vars(sub).items():
            if isinstance(value, Tensor) and not isinstance(value, nn.Parameter):
                found.append(f"{prefix + '.' if prefix else ''}{key}")
    return found


def check_quantizer(cls_or_name: type | str, *, num_codes: int = 16, dim: int = 8,
                    kwargs: dict[str, Any] | None = None, device: str | torch.device | None = None,
                    seed: int = 0) -> None:
    """Run the contract checks on a quantizer class or registered name; raise AssertionError on failure.

    ``kwargs`` go to the constructor (after the registry defaults for a name). ``device``:
    where to run (default CPU); the move checks also visit CUDA when it is present.
    """
    make = _factory(cls_or_name, num_codes, dim, dict(kwargs or {}))
    device = torch.device(device or "cpu")
    torch.manual_seed(seed)
    q = make().to(device)
    label = f"{cls_or_name if isinstance(cls_or_name, str) else cls_or_name.__qualname__}"
    c = q.num_codes  # a method may round the requested count (e.g. FSQ levels); it says so here
    assert q.dim == dim, f"{label}: dim is {q.dim}, asked for {dim}"
    assert 1 <= c, f"{label}: num_codes {c}"
    stray = _unregistered_tensors(q)
    assert not stray, f"{label}: tensor attributes {stray} are not buffers, so .to()/state_dict miss them"

    z = torch.randn(2, dim, 3, 3, device=device)
    flat_z = z.permute(0, 2, 3, 1).reshape(-1, dim)
    q.init_codebook(flat_z, torch.Generator().manual_seed(seed))
    book = q.codebook
    assert book.shape == (c, dim), f"{label}: codebook shape {tuple(book.shape)}, expected {(c, dim)}"

    # A few runner steps: timers, temperatures, inner steps and EMA updates all move.
    enc = nn.Conv2d(dim, dim, 1).to(device)
    opt = runner_optimizer(q, enc.parameters())
    before = q.codebook.detach().clone()
    for step in range(3):
        runner_step(q, enc(z), opt, step)
    assert not torch.equal(before, q.codebook.detach()), f"{label}: three runner steps did not move the codebook"

    q.train()
    x = z.clone().requires_grad_(True)
    out = q(x)
    assert isinstance(out, QuantizerOutput), f"{label}: forward must return a QuantizerOutput"
    assert out.z_q.shape == x.shape, f"{label}: z_q shape {tuple(out.z_q.shape)} != input {tuple(x.shape)}"
    assert out.z_q.dtype == x.dtype, f"{label}: z_q dtype {out.z_q.dtype} != input {x.dtype}"
    assert out.indices is not None and out.indices.shape == (2, 3, 3), f"{label}: indices must be (B, H, W)"
    assert out.indices.dtype == torch.long, f"{label}: indices dtype {out.indices.dtype}, expected torch.long"
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < c, f"{label}: indices outside [0, {c})"
    assert out.loss.dim() == 0 and torch.isfinite(out.loss), f"{label}: loss must be a finite scalar"
    for key, term in out.terms.items():
        assert not term.requires_grad, f"{label}: terms[{key!r}] must be detached (it is only logged)"
    if out.probs is not None:
        assert out.probs.shape == (2, 3, 3, c), f"{label}: probs shape {tuple(out.probs.shape)}, expected (2, 3, 3, {c})"
        torch.testing.assert_close(out.probs.sum(-1), torch.ones(2, 3, 3, device=device, dtype=out.probs.dtype),
                                   msg=lambda m: f"{label}: probs must sum to one over codes; {m}")
        assert (out.probs >= 0).all(), f"{label}: probs must be non-negative"
    flat = q(flat_z)
    assert flat.z_q.shape == (18, dim) and flat.indices.shape == (18,), f"{label}: (N, D) input gives (N, D), (N,)"

    # The task (reconstruction) gradient must reach the encoder through z_q itself, not only
    # through the quantizer's own loss (a detached z_q would leave the encoder untrained).
    through_zq = None
    if out.z_q.requires_grad:
        (through_zq,) = torch.autograd.grad(out.z_q.pow(2).sum(), x, retain_graph=True, allow_unused=True)
    assert through_zq is not None and through_zq.abs().sum() > 0, \
        f"{label}: no gradient reaches the encoder through z_q (straight-through or equivalent)"
    for p in q.parameters():
        p.grad = None
    (out.z_q.pow(2).sum() + out.loss).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, \
        f"{label}: no finite, non-zero gradient reaches the encoder output"
    for group in q.param_groups():
        for p in group["params"]:
            assert p.grad is not None and torch.isfinite(p.grad).all(), \
                f"{label}: a trainable parameter of shape {tuple(p.shape)} gets no finite gradient"

    q.eval()
    with torch.no_grad():
        a, b = q(z), q(z)
    assert torch.equal(a.z_q, b.z_q) and torch.equal(a.indices, b.indices), f"{label}: eval must be deterministic"
    # `codebook` is what the decoder's inputs are drawn from: eval outputs are its rows.
    torch.testing.assert_close(a.z_q.permute(0, 2, 3, 1), q.codebook.detach()[a.indices], rtol=1e-4, atol=1e-5,
                               msg=lambda m: f"{label}: in eval, z_q must be codebook[indices]; {m}")
    # And back: embed(indices) is the eval z_q of those codes, in both layouts.
    with torch.no_grad():
        back, flat_back = q.embed(a.indices), q.embed(a.indices.reshape(-1))
    assert back.shape == z.shape and flat_back.shape == (18, dim), \
        f"{label}: embed must map (B, H, W) to (B, D, H, W) and (N,) to (N, D)"
    torch.testing.assert_close(back.to(a.z_q.dtype), a.z_q, rtol=1e-4, atol=1e-5,
                               msg=lambda m: f"{label}: in eval, embed(indices) must be z_q; {m}")
    assert torch.equal(flat_back, back.permute(0, 2, 3, 1).reshape(-1, dim)), f"{label}: embed's layouts disagree"

    fresh = make().to(device)
    fresh.load_state_dict(copy.deepcopy(q.state_dict()))
    fresh.eval()
    for key, value in q.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), f"{label}: state_dict[{key!r}] does not round-trip"
    with torch.no_grad():
        assert torch.equal(fresh(z).z_q, a.z_q), f"{label}: a reloaded copy quantizes differently"

    _check_moves(q, z, a, label)


def _check_moves(q: Quantizer, z: Tensor, reference: QuantizerOutput, label: str) -> None:
    """Mixed precision as the runner uses it (bf16 autocast), and CUDA/CPU moves where CUDA exists."""
    with torch.no_grad(), torch.autocast(z.device.type, dtype=torch.bfloat16):
        out = q(z)
    assert out.z_q.shape == z.shape and torch.isfinite(out.z_q).all() and torch.isfinite(out.loss), \
        f"{label}: under bf16 autocast the output is misshapen or not finite"
    if torch.cuda.is_available():
        other = torch.device("cpu") if z.is_cuda else torch.device("cuda")
        moved = copy.deepcopy(q).to(other)
        with torch.no_grad():
            out = moved(z.to(other))
        assert out.z_q.device.type == other.type, f"{label}: z_q stays on {out.z_q.device} after .to({other})"
        torch.testing.assert_close(out.z_q.to(z.device), reference.z_q, rtol=1e-3, atol=1e-3,
                                   msg=lambda m: f"{label}: {other} gives other z_q than {z.device}; {m}")
