"""MAML (Finn et al., 2017) as pure functions over named-parameter dicts, plus the familiar `MetaMAML` class.

The inner loop never writes into the module: parameters live in an ``OrderedDict[str, Tensor]`` and the model is
evaluated with `torch.func.functional_call`. One inner step on a support loss L_s is

    θ' = θ - α ∇θ L_s(θ)                                  (second order: ∇θ L_s is differentiable, create_graph)
    θ' = θ - α stopgrad(∇θ L_s(θ))                        (first order: dθ'/dθ = I)

and the outer (meta) objective is the query loss at the adapted parameters, averaged over tasks,

    L_meta(θ) = 1/n Σ_i L_q,i(θ'_i(θ)),    ∇θ L_meta = 1/n Σ_i (∂θ'_i/∂θ)ᵀ ∇L_q,i(θ'_i).

The whole workflow in a few lines::

    params = params_of(model)
    fast = adapt(lambda p: F.mse_loss(functional_forward(model, sx, None, p)[0], sy), params, lr=0.1, num_steps=3)
    query_loss = F.mse_loss(functional_forward(model, qx, None, fast)[0], qy)
    query_loss.backward()          # meta-gradient lands in model.parameters()' .grad

`MetaMAML` wraps exactly this with an Adam outer optimizer and input checks (the functional core checks only
``lr`` and ``num_steps``: it runs inside the RL learner's hot path).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import numbers
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

Params = OrderedDict  # OrderedDict[str, torch.Tensor]
LearningRate = float | Mapping[str, float]

__all__ = [
    "MetaMAML",
    "adapt",
    "functional_forward",
    "inner_step",
    "params_of",
    "sanitize_grads",
]


def params_of(model: nn.Module) -> Params:
    """The trainable named parameters of ``model`` (the live `nn.Parameter` objects, not copies)."""
    return OrderedDict((name, p) for name, p in model.named_parameters() if p.requires_grad)


def _lr_for(lr: LearningRate, name: str) -> float | torch.Tensor:
    return lr[name] if isinstance(lr, Mapping) else lr


def _all_zero(lr: LearningRate) -> bool:
    """Whether every rate of ``lr`` is the number 0 (learned tensor rates never count: their gradient is used)."""
    rates = lr.values() if isinstance(lr, Mapping) else (lr,)
    return all(not isinstance(r, torch.Tensor) and r == 0 for r in rates)


def inner_step(loss: torch.Tensor, params: Params, *, lr: LearningRate, first_order: bool = False) -> Params:
    """One gradient step θ' = θ - lr·∇θ loss over the named tensors ``params`` (see the module docstring).

    Second order keeps the graph of the gradient (``create_graph=True``) so that the meta-gradient contains the
    Hessian term; first order uses a detached gradient, so θ' still depends on θ through the identity only.
    Parameters that ``loss`` does not depend on (gradient ``None``) are returned unchanged.
    ``lr`` is a float >= 0 or a dict name -> such float covering every name in ``params`` (0: θ' = θ, the step
    of a policy evaluated in context only).
    """
    check_lr(lr, names=params.keys(), allow_zero=True)
    names = list(params)
    tensors = [params[n] for n in names]
    frozen = [n for n, t in zip(names, tensors) if not t.requires_grad]
    if frozen:
        raise ValueError(f"params {frozen} do not require grad; pass trainable tensors (params_of(model))")
    if _all_zero(lr):  # θ' = θ - 0·g = θ, and dθ'/dθ = I in either order: no gradient to compute
        return OrderedDict(zip(names, tensors))
    grads = torch.autograd.grad(loss, tensors, create_graph=not first_order, allow_unused=True)
    out: Params = OrderedDict()
    for name, theta, g in zip(names, tensors, grads):
        out[name] = theta if g is None else theta - _lr_for(lr, name) * g
    return out


def adapt(
    loss_fn: Callable[[Params], torch.Tensor],
    params: Params,
    *,
    lr: LearningRate,
    num_steps: int = 1,
    first_order: bool = False,
) -> Params:
    """``num_steps`` inner steps θ_{k+1} = θ_k - lr·∇ loss_fn(θ_k), starting from θ_0 = ``params`` (lr > 0)."""
    check_lr(lr, names=params.keys())
    check_steps(num_steps, name="num_steps")
    for _ in range(num_steps):
        params = inner_step(loss_fn(params), params, lr=lr, first_order=first_order)
    return params


@functools.cache
def _forward_takes_state(cls: type) -> bool:
    """True when ``cls.forward`` accepts a second positional argument (the hidden state)."""
    sig = inspect.signature(cls.forward)
    positional = [
        p
        for p in list(sig.parameters.values())[1:]  # drop self
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in positional)


def takes_state(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes ``(x, hidden_state)`` (metarl backbones) or only ``x`` (e.g. `nn.Linear`)."""
    return _forward_takes_state(type(model))


def functional_forward(model: nn.Module, x: torch.Tensor, hidden_state, params: Params):
    """``model`` evaluated at ``params`` via `torch.func.functional_call`; returns ``(y, next_hidden_state)``.

    Models whose forward takes only ``x`` are called with ``(x,)`` and return ``(y, None)``. Names missing from
    ``params`` (e.g. frozen parameters, buffers) fall back to the module's own tensors.
    """
    if not takes_state(model):
        return torch.func.functional_call(model, params, (x,)), None
    out = torch.func.functional_call(model, params, (x, hidden_state))
    if isinstance(out, tuple) and len(out) == 2:
        return out
    return out, None


def sanitize_grads(grads: Mapping[str, torch.Tensor | None]) -> Mapping[str, torch.Tensor | None]:
    """Return ``grads`` unchanged if every gradient is finite; raise ValueError naming the first bad parameter.

    A pure check (no flags): callers decide where to call it, once per update, never inside a hot loop.
    """
    for name, g in grads.items():
        if g is None:
            continue
        finite = torch.isfinite(g)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(
                f"gradient of parameter {name!r} has {bad} non-finite value(s) of {g.numel()} "
                f"(e.g. {g[~finite].flatten()[0].item()}); lower the learning rate or check the inputs"
            )
    return grads


class MetaMAML:
    """MAML with an Adam outer optimizer over ``model``'s parameters.

    ``meta_update(tasks)`` adapts a functional copy of the parameters on each task's support set with
    ``num_inner_steps`` steps of size ``inner_lr`` and takes one Adam step (``outer_lr``) on the mean query loss.
    After ``meta_update`` the parameters' ``.grad`` hold the meta-gradient of the step just taken.

    Tasks are ``(support_x, support_y, query_x, query_y)`` with x ``(B, T, D)`` (or ``(B, D)``), y ``(B, T, O)``.
    ``initial_hidden_state`` (used for both the support and the query pass of a task) may be
      - ``None``: the model's own zeros (``model.init_hidden(B)``) / nothing for stateless models;
      - a list with one batch-first state per task (the unambiguous form);
      - a tensor (or dict of tensors) with one row per task ``(num_tasks, S)``: task i uses row i expanded to its
        batch; or ``(B, S)`` matching every task's batch, shared by all tasks. When both readings fit
        (num_tasks == B) one row per task wins. Any other shape is a ValueError naming the shapes.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        outer_lr: float = 0.001,
        first_order: bool = False,
        *,
        num_inner_steps: int = 1,
    ):
        check_lr(inner_lr, name="inner_lr")
        check_lr(outer_lr, name="outer_lr")
        check_steps(num_inner_steps, name="num_inner_steps")
        self.model = model
        self.inner_lr = inner_lr
        self.outer_lr = outer_lr
        self.first_order = bool(first_order)
        self.num_inner_steps = num_inner_steps
        self.optimizer = torch.optim.Adam(model.parameters(), lr=outer_lr)

    def functional_forward(self, x: torch.Tensor, hidden_state, params: Params):
        """``self.model`` at ``params``; returns ``(y, next_hidden_state)``."""
        return functional_forward(self.model, x, hidden_state, params)

    def _adapt(self, support_x, support_y, state, loss_fn, num_steps: int) -> Params:
        def support_loss(p: Params) -> torch.Tensor:
            y, _ = functional_forward(self.model, support_x, state, p)  # (B, T, O)
            return loss_fn(y, support_y)

        return adapt(
            support_loss, params_of(self.model), lr=self.inner_lr, num_steps=num_steps, first_order=self.first_order
        )

    def adapt_task(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        initial_hidden_state=None,
        loss_fn: Callable | None = None,
        num_steps: int | None = None,
    ) -> Params:
        """Adapted parameters θ' for one task (name -> tensor, differentiable w.r.t. the model's parameters).

        ``num_steps=None`` means ``self.num_inner_steps`` (1 unless set); ``loss_fn=None`` means MSE.
        """
        steps = self.num_inner_steps if num_steps is None else num_steps
        check_steps(steps, name="num_steps")
        check_task(self.model, support_x, support_y, name="support")
        batch = support_x.shape[0]
        state = resolve_task_states(self.model, initial_hidden_state, [(batch, batch)])[0][0]
        return self._adapt(support_x, support_y, state, loss_fn or F.mse_loss, steps)

    def meta_loss(self, tasks: Sequence[tuple], initial_hidden_state=None, loss_fn: Callable = F.mse_loss):
        """The MAML objective 1/n Σ_i L_q,i(θ'_i) as a differentiable scalar (no optimizer step)."""
        if len(tasks) == 0:
            raise ValueError("tasks is empty; pass at least one (support_x, support_y, query_x, query_y) tuple")
        for i, task in enumerate(tasks):
            if len(task) != 4:
                raise ValueError(f"tasks[{i}] has {len(task)} elements; expected (support_x, support_y, query_x, query_y)")
            check_task(self.model, task[0], task[1], name=f"tasks[{i}] support")
            check_task(self.model, task[2], task[3], name=f"tasks[{i}] query")
        batches = [(t[0].shape[0], t[2].shape[0]) for t in tasks]
        states = resolve_task_states(self.model, initial_hidden_state, batches)
        total = 0.0
        for (support_x, support_y, query_x, query_y), (support_state, query_state) in zip(tasks, states):
            fast = self._adapt(support_x, support_y, support_state, loss_fn, self.num_inner_steps)
            query_pred, _ = functional_forward(self.model, query_x, query_state, fast)  # (B, T, O)
            total = total + loss_fn(query_pred, query_y)
        return total / len(tasks)

    def meta_update(self, tasks: Sequence[tuple], initial_hidden_state=None, loss_fn: Callable = F.mse_loss) -> float:
        """One outer Adam step on the MAML objective; returns the mean query loss before the step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.meta_loss(tasks, initial_hidden_state, loss_fn)
        if not math.isfinite(loss.item()):
            raise ValueError(f"meta loss is {loss.item()}; check inner_lr ({self.inner_lr}) and the task data")
        loss.backward()
        sanitize_grads({n: p.grad for n, p in params_of(self.model).items()})
        self.optimizer.step()
        return float(loss.item())


# ---------------------------------------------------------------------------------------------------------------
# Input checks at the public boundaries (ValueError naming the argument, the value and what is allowed).


def check_lr(lr, *, name: str = "lr", names=None, allow_zero: bool = False) -> None:
    """``lr`` must be a finite float > 0 (>= 0 with ``allow_zero``: a step of 0 leaves θ unchanged), or a dict
    name -> such float covering ``names`` (tensors: unchecked)."""
    if isinstance(lr, Mapping):
        missing = sorted(set(names or ()) - set(lr))
        if missing:
            raise ValueError(f"{name} dict has no learning rate for parameters {missing}")
        for key, value in lr.items():
            check_lr(value, name=f"{name}[{key!r}]", allow_zero=allow_zero)
        return
    if isinstance(lr, torch.Tensor):  # learned (Meta-SGD style) rates: the caller owns their sign
        return
    bound = ">= 0" if allow_zero else "> 0"
    if (isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr)
            or lr < 0 or (lr == 0 and not allow_zero)):
        raise ValueError(f"{name} must be a finite number {bound} (or a dict of them), got {lr!r}")


def check_steps(num_steps, *, name: str = "num_steps") -> None:
    """``num_steps`` must be an int >= 1."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {num_steps!r}")


def _dim(model: nn.Module, *attrs: str) -> int | None:
    for attr in attrs:
        value = getattr(model, attr, None)
        if isinstance(value, int):
            return value
    return None


def check_finite(t: torch.Tensor, *, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf value(s) of {t.numel()}")


def check_task(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, name: str = "") -> None:
    """x ``(B, T, D)`` or ``(B, D)`` with D = model.input_dim; y with x's leading dims and O = model.output_dim."""
    xl, yl = (f"{name}_x", f"{name}_y") if name else ("x", "y")
    for label, t in ((xl, x), (yl, y)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{label} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim not in (2, 3):
            raise ValueError(f"{label} must have shape (B, T, D) or (B, D), got shape {tuple(t.shape)}")
        check_finite(t, name=label)
    if y.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"{yl} shape {tuple(y.shape)} does not match {xl} shape {tuple(x.shape)} "
                         f"in the leading (batch, time) dims")
    in_dim, out_dim = _dim(model, "input_dim", "in_features"), _dim(model, "output_dim", "out_features")
    if in_dim is not None and x.shape[-1] != in_dim:
        raise ValueError(f"{xl} feature dim {x.shape[-1]} (shape {tuple(x.shape)}) != model input_dim {in_dim}")
    if out_dim is not None and y.shape[-1] != out_dim:
        raise ValueError(f"{yl} feature dim {y.shape[-1]} (shape {tuple(y.shape)}) != model output_dim {out_dim}")


def state_leaves(state, *, name: str) -> dict[str, torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return {"": state}
    if isinstance(state, Mapping) and all(isinstance(v, torch.Tensor) for v in state.values()):
        return dict(state)
    raise ValueError(f"{name} must be a Tensor or a dict of Tensors (batch-first), got {type(state).__name__}")


def map_state(state, fn):
    return fn(state) if isinstance(state, torch.Tensor) else {k: fn(v) for k, v in state.items()}


def describe_state(state) -> str:
    return str({k or "state": tuple(v.shape) for k, v in state_leaves(state, name="state").items()})


def check_state(model: nn.Module, state, *, name: str) -> None:
    """Structure, trailing shape (against ``model.init_hidden(1)`` when available) and finiteness of a state."""
    leaves = state_leaves(state, name=name)
    for key, t in leaves.items():
        if t.ndim < 1:
            raise ValueError(f"{name}{key and '[' + repr(key) + ']'} must be batch-first, got a scalar")
        check_finite(t, name=f"{name}{key and '[' + repr(key) + ']'}")
    if callable(getattr(model, "init_hidden", None)):
        ref = state_leaves(model.init_hidden(1), name="model.init_hidden(1)")
        if set(ref) != set(leaves) or any(ref[k].shape[1:] != leaves[k].shape[1:] for k in ref):
            raise ValueError(f"{name} has shapes {describe_state(state)}; the model's state is (B, ...) with "
                             f"{describe_state(model.init_hidden(1))} for B=1")


def resolve_task_states(model: nn.Module, initial, batches: list[tuple[int, int]]) -> list[tuple]:
    """One ``(support_state, query_state)`` per task from ``initial_hidden_state`` (see `MetaMAML`).

    ``batches`` holds each task's ``(support_batch, query_batch)``.
    """
    n = len(batches)
    if initial is None:
        return [(None, None)] * n
    if not takes_state(model):
        raise ValueError(f"initial_hidden_state was given but {type(model).__name__}.forward takes no hidden state")
    if isinstance(initial, (list, tuple)):
        if len(initial) != n:
            raise ValueError(f"initial_hidden_state is a list of {len(initial)} states for {n} tasks")
        out = []
        for i, (state, batch) in enumerate(zip(initial, batches)):
            check_state(model, state, name=f"initial_hidden_state[{i}]")
            lead = {t.shape[0] for t in state_leaves(state, name="state").values()}
            if lead != {batch[0]} or batch[0] != batch[1]:
                raise ValueError(f"initial_hidden_state[{i}] has shapes {describe_state(state)} but task {i} has "
                                 f"(support, query) batch {batch}; pass one batch-first state per task")
            out.append((state, state))
        return out
    check_state(model, initial, name="initial_hidden_state")
    lead = {t.shape[0] for t in state_leaves(initial, name="state").values()}
    if lead == {n}:  # one row per task (wins when num_tasks == B)

        def row(i: int, batch: int):
            return map_state(initial, lambda t: t[i : i + 1].expand(batch, *t.shape[1:]))

        return [(row(i, bs), row(i, bq)) for i, (bs, bq) in enumerate(batches)]
    if len(lead) == 1 and all(bs == bq == next(iter(lead)) for bs, bq in batches):
        return [(initial, initial)] * n
    raise ValueError(f"initial_hidden_state has shapes {describe_state(initial)}: expected one row per task "
                     f"(leading dim {n} = num_tasks) or one row per sample (leading dim = every task's batch; "
                     f"(support, query) batches are {batches}), or a list with one state per task")
