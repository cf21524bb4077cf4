"""A recurrence's time loop as ONE autograd node with a hand-written backward, batched over tasks under torch.vmap.

The GRU's, the LSTM's and the LRU's sequence functions (``metarl.models.rnn``, ``metarl.models.lru``) each write
their loop once, for a leading task axis n (n stacked recurrences, each with its own parameters), and get from
``time_loop_function`` the `torch.autograd.Function` of ONE recurrence (no task axis):

- called directly, it runs the loop with n = 1 and records one node (the per-task meta-gradient loop);
- under ``torch.vmap`` (the batched meta-gradient, ``metarl.meta_batch``) its ``vmap`` rule moves the vmapped axis
  to the front (expanding inputs that are shared by all tasks) and records one node of the batched Function, so
  the time loop runs once per step for the whole shard;
- its backward is written in plain differentiable ops (or calls the batched Function again), so it can be
  differentiated again: second-order MAML.

The contract, for ``num_tensors`` tensor inputs followed by static (non-tensor) arguments::

    forward(*tensors, *static) -> output or tuple of outputs, every tensor with the leading task axis
    saved(tensors, outputs) -> the tensors the backward needs (a tuple)
    backward(apply, saved, grads, static) -> the gradients of the tensor inputs (with the task axis), where
        ``apply`` runs the loop again on such inputs as one node (for a backward that runs the loop itself: the
        batched Function, or for one recurrence the Function itself, so that the backward stays vmappable)
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def time_loop_function(name: str, forward: Callable, backward: Callable, *, num_tensors: int,
                       saved: Callable) -> type[torch.autograd.Function]:
    """The Function of ONE recurrence for the task-batched loop ``forward`` / ``backward`` (see the module
    docstring); ``name`` names the two classes (``name`` and ``name + "Batched"``) in autograd graphs."""

    def setup_context(ctx, inputs, output):
        ctx.static = tuple(inputs[num_tensors:])
        outputs = output if isinstance(output, tuple) else (output,)
        ctx.save_for_backward(*saved(tuple(inputs[:num_tensors]), outputs))

    def batched_forward(*inputs):
        return forward(*inputs)

    def batched_backward(ctx, *grads):
        return (*backward(batched.apply, ctx.saved_tensors, grads, ctx.static), *(None,) * len(ctx.static))

    batched = type(name + "Batched", (torch.autograd.Function,), {
        "__doc__": f"``{name}``'s loop with a leading task axis as one autograd node.",
        "forward": staticmethod(batched_forward), "setup_context": staticmethod(setup_context),
        "backward": staticmethod(batched_backward)})

    def single_forward(*inputs):
        out = forward(*(x[None] for x in inputs[:num_tensors]), *inputs[num_tensors:])
        return tuple(o[0] for o in out) if isinstance(out, tuple) else out[0]

    def single_apply(*inputs):  # ``apply`` for the single backward: this Function again (vmappable), task axis kept
        out = single.apply(*(x[0] for x in inputs[:num_tensors]), *inputs[num_tensors:])
        return tuple(o[None] for o in out) if isinstance(out, tuple) else out[None]

    def single_backward(ctx, *grads):
        out = backward(single_apply, tuple(x[None] for x in ctx.saved_tensors), tuple(g[None] for g in grads),
                       ctx.static)
        return (*(None if g is None else g[0] for g in out), *(None,) * len(ctx.static))

    def vmap(info, in_dims, *inputs):
        tensors = [x.movedim(d, 0) if d is not None else x.expand(info.batch_size, *x.shape)
                   for x, d in zip(inputs[:num_tensors], in_dims)]
        out = batched.apply(*tensors, *inputs[num_tensors:])
        return out, ((0,) * len(out) if isinstance(out, tuple) else 0)

    single = type(name, (torch.autograd.Function,), {
        "__doc__": f"``{name}``'s loop of ONE recurrence as one autograd node; under torch.vmap, ``{name}Batched``.",
        "forward": staticmethod(single_forward), "setup_context": staticmethod(setup_context),
        "backward": staticmethod(single_backward), "vmap": staticmethod(vmap)})
    return single
