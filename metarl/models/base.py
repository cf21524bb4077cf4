"""The one interface every sequence backbone implements.

A backbone maps inputs to outputs while carrying a recurrent state::

    state = model.init_hidden(B)            # Tensor (B, ...) or flat dict str -> Tensor (B, ...); {} if stateless
    y, state = model(x_t, state)            # one step:  x_t (B, input_dim) -> y (B, output_dim)
    y, state = model(x, state)              # sequence:  x (B, T, input_dim) -> y (B, T, output_dim)

Sequence mode equals T calls of step mode (tested for every registered backbone, float64, including when
continuing from a non-initial state). ``hidden_state=None`` means ``init_hidden(B)`` with ``x``'s device and dtype.

Subclasses implement ``state_shapes(batch_size)`` and at least one of ``_step`` / ``_sequence``; the default
``_sequence`` loops ``_step`` over time and the default ``_step`` runs ``_sequence`` on a length-1 sequence.
Shape checks here are cheap Python comparisons; nothing data-dependent (NaN checks) runs in ``forward``.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from torch import nn

#: A recurrent state: one batch-first tensor or a flat dict of batch-first tensors ({} when stateless).
State = torch.Tensor | dict[str, torch.Tensor]
#: What ``state_shapes`` returns: the shape of the state tensor, or a dict of shapes.
StateShapes = tuple[int, ...] | dict[str, tuple[int, ...]]


_PLAIN_OPS = contextvars.ContextVar("metarl_models_plain_ops", default=False)


@contextlib.contextmanager
def plain_ops():
    """Within this context every backbone computes with plain tensor ops (matmuls, elementwise): no fused RNN
    kernels (``nn.GRU``/``nn.LSTM``, cuDNN). What ``torch.func.vmap`` over tasks and double backward on CUDA need;
    the parameters and the numbers are the same (tested to 1e-12 in float64)."""
    token = _PLAIN_OPS.set(True)
    try:
        yield
    finally:
        _PLAIN_OPS.reset(token)


def plain_ops_active() -> bool:
    """True inside `plain_ops`."""
    return _PLAIN_OPS.get()


class _StackSteps(torch.autograd.Function):
    """``torch.stack(steps, dim)`` whose backward is ONE ``unbind`` (torch.stack's is T ``select``s, whose own
    backward allocates a full (B, T, ...) zero tensor per step: O(T²) in a double backward through time)."""

    generate_vmap_rule = True  # the forward and backward are plain torch ops

    @staticmethod
    def forward(dim: int, *steps: torch.Tensor) -> torch.Tensor:
        return torch.stack(steps, dim=dim)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.dim = inputs[0]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return None, *grad.unbind(dim=ctx.dim)  # differentiable: its backward is one stack


def stack_steps(steps: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """T tensors (B, ...) -> (B, T, ...): ``torch.stack(steps, dim)`` with an O(T) backward of any order."""
    return _StackSteps.apply(dim, *steps)


def check_positive_int(name: str, value) -> int:
    """Return ``value`` if it is a positive int (bool excluded), else raise ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    return value


class Backbone(nn.Module):
    """Base class: ``forward(x, hidden_state=None) -> (y, next_hidden_state)``; see the module docstring.

    Attributes:
        input_dim: size of the last axis of ``x``.
        output_dim: size of the last axis of ``y``.
        stateful: False for backbones whose state is always ``{}`` (the output at t depends on x_t only).
    """

    stateful: bool = True

    def __init__(self, *, input_dim: int, output_dim: int):
        super().__init__()
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.output_dim = check_positive_int("output_dim", output_dim)

    # ----------------------------------------------------------------------------------------------- state
    def state_shapes(self, batch_size: int) -> StateShapes:
        """Shape(s) of the state for ``batch_size`` rows (batch-first)."""
        raise NotImplementedError

    def _default_device_dtype(self, device, dtype) -> tuple[torch.device, torch.dtype]:
        p = next(self.parameters(), None)
        if device is None:
            device = p.device if p is not None else torch.device("cpu")
        if dtype is None:
            dtype = p.dtype if p is not None else torch.get_default_dtype()
        return device, dtype

    def init_hidden(self, batch_size: int, *, device=None, dtype=None) -> State:
        """Zeros of ``state_shapes(batch_size)`` on the parameters' device/dtype unless given."""
        check_positive_int("batch_size", batch_size)
        device, dtype = self._default_device_dtype(device, dtype)
        shapes = self.state_shapes(batch_size)
        if isinstance(shapes, dict):
            return {k: torch.zeros(s, device=device, dtype=dtype) for k, s in shapes.items()}
        return torch.zeros(shapes, device=device, dtype=dtype)

    def check_state(self, state: State, batch_size: int) -> None:
        """Raise ValueError naming the shapes if ``state`` does not fit ``batch_size`` rows (never broadcasts)."""
        expected = self.state_shapes(batch_size)
        if isinstance(expected, dict):
            if not isinstance(state, dict) or state.keys() != expected.keys():
                got = sorted(state) if isinstance(state, dict) else type(state).__name__
                raise ValueError(f"hidden_state must be a dict with keys {sorted(expected)}, got {got}")
            for key, shape in expected.items():
                if tuple(state[key].shape) != shape:
                    raise ValueError(
                        f"hidden_state[{key!r}] has shape {tuple(state[key].shape)}, expected {shape} "
                        f"for a batch of {batch_size}"
                    )
        elif not isinstance(state, torch.Tensor) or tuple(state.shape) != expected:
            got = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
            raise ValueError(f"hidden_state has shape {got}, expected {expected} for a batch of {batch_size}")

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, hidden_state: State | None = None) -> tuple[torch.Tensor, State]:
        """x (B, input_dim) -> y (B, output_dim), or x (B, T, input_dim) -> y (B, T, output_dim); plus the state."""
        if x.dim() not in (2, 3) or x.shape[-1] != self.input_dim:
            raise ValueError(
                f"x must have shape (B, {self.input_dim}) or (B, T, {self.input_dim}), got {tuple(x.shape)}"
            )
        batch_size = x.shape[0]
        if hidden_state is None:
            hidden_state = self.init_hidden(batch_size, device=x.device, dtype=x.dtype)
        else:
            self.check_state(hidden_state, batch_size)
        if x.dim() == 2:
            return self._step(x, hidden_state)
        return self._sequence(x, hidden_state)

    def _step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step, x (B, D) -> y (B, O). Default: a length-1 sequence."""
        y, state = self._sequence(x.unsqueeze(1), state)
        return y.squeeze(1), state

    def _sequence(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """A sequence, x (B, T, D) -> y (B, T, O). Default: loop ``_step`` over time."""
        ys = []
        for x_t in x.unbind(dim=1):  # not x[:, t]: each slice's backward would fill a full-size zero tensor
            y, state = self._step(x_t, state)
            ys.append(y)
        return stack_steps(ys), state
