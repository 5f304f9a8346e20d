"""What runs inside an nnsight trace (locally or on an NDIF server): a plan's edits. Torch only.

This module and :mod:`hooks_mm.interventions.ops` are shipped by value with every remote
request (``nnsight.register``), so they import nothing but torch: the server has torch,
transformers and nnsight, not hooks_mm. :mod:`hooks_mm.remote.compile` turns intervention
specs into a *plan* of plain data (module paths and the specs' own ops); :func:`run`
executes it in a trace.

A plan is a dict:

- ``copies`` (K): the inputs are tiled K times along the batch, one copy per config;
  config ``k`` owns rows ``k*b:(k+1)*b``.
- ``inputs``: the model's keyword inputs for one copy (tiled here, on the server, so
  they travel once).
- ``sites``: ``(path, attr, [(k, op), ...])`` in the model's execution order; ``attr`` is
  ``"input"``, ``"output"`` or ``"mask"`` (the ``attention_mask`` keyword of an
  attention module).
- ``capture``: for a source run, ``(key, path, attr)`` activations to keep.
- ``reduce``: ``None`` (return the logits) or ``(positions, fn)``: ``fn`` of each config's
  logits at ``positions`` (one per row), or of its whole logits when ``positions`` is None.
- ``use_cache``: False when the model's forward takes it: no KV cache is built (a sweep never reads it).
- ``head``: the unembedding module's path, with ``positions``: its input (the last hidden
  state, after the final norm) is cut to those positions before it runs, so the server
  computes [copies * batch, 1, vocab] logits, never [copies * batch, seq, vocab]; the
  model's own head (and what its forward does after it: soft-capping, scaling) runs on them.

Example (inside a trace)::

    with lm.trace(plan["inputs"]):
        values = runner.run(lm, plan, store).save()
"""

import torch

from hooks_mm.interventions.ops import apply


def tile(value, k):
    """``k`` copies of a batch, concatenated along dim 0 (tensors and lists)."""
    if torch.is_tensor(value) and value.dim() > 0:
        return value.repeat(k, *([1] * (value.dim() - 1)))
    if isinstance(value, list):
        return value * k
    return value


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _with_first(value, new):
    return (new, *value[1:]) if isinstance(value, tuple) else new


def _edit(x, edits, b, store, attr):
    if attr == "mask":
        heads = max((op[1].shape[1] for _, op in edits if op[0] == "knock"), default=1)
        if x.shape[1] < heads:
            x = x.expand(x.shape[0], heads, x.shape[2], x.shape[3])
    x = x.clone()
    for k, op in edits:
        rows = slice(k * b, (k + 1) * b)
        x[rows] = apply(x[rows], op, store)
    return x


def _causal(b, q, device):
    return torch.ones(q, q, dtype=torch.bool, device=device).tril()[None, None].expand(b, 1, q, q)


def _edit_mask(env, edits, b, store, n_rows):
    args, kwargs = env.inputs
    mask = kwargs.get("attention_mask")
    if mask is not None and not torch.is_tensor(mask):
        raise NotImplementedError(
            f"attention knockout edits the attention mask, but this model passes a {type(mask).__name__} "
            "(flex attention): load it with attn_implementation='sdpa' or 'eager'."
        )
    if mask is None:
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = _causal(n_rows, _first(hidden).shape[1], hidden.device)
    elif mask.shape[0] != n_rows:
        mask = mask.expand(n_rows, *mask.shape[1:])
    env.inputs = (args, {**kwargs, "attention_mask": _edit(mask, edits, b, store, "mask")})


def run(lm, plan, store):
    """Execute ``plan`` inside an open trace of ``lm``; returns the reduced values or logits."""
    k, b = plan["copies"], plan["batch"]
    # the model sees exactly these keyword inputs (nnsight's own batching would add position_ids)
    kwargs = {key: tile(v, k) for key, v in plan["inputs"].items()}
    if plan.get("use_cache") is False:  # no KV cache: 2 x layers x tokens x kv width per copy, never read here
        kwargs["use_cache"] = False
    lm.inputs = ((), kwargs)
    for path, attr, edits in plan["sites"]:
        env = lm.get(path)
        if attr == "mask":
            _edit_mask(env, edits, b, store, k * b)
        elif attr == "input":
            env.input = _edit(env.input, edits, b, store, attr)
        else:
            out = env.output
            env.output = _with_first(out, _edit(_first(out), edits, b, store, attr))
    for key, path, attr in plan.get("capture", ()):
        env = lm.get(path)
        store[key] = env.input if attr == "input" else _first(env.output)
    reduce = plan.get("reduce")
    if reduce == "none":
        return None
    head = plan.get("head")
    if reduce is not None and reduce[0] is not None and head is not None:
        _cut_to_positions(lm.get(head), reduce[0], k, b)
        logits = lm.output.logits[:, 0]  # [copies * batch, vocab]: one position per row
    else:
        logits = lm.output.logits
    if reduce is None:
        return logits
    positions, fn = reduce
    values = []
    for i in range(k):
        part = logits[i * b : (i + 1) * b]
        if positions is not None and head is None:
            part = part[torch.arange(b, device=part.device), positions.to(part.device)]
        values.append(torch.as_tensor(fn(part)).detach().float().cpu())
    return torch.stack(values)


def _cut_to_positions(env, positions, k, b):
    """Feed the unembedding only row i's hidden state at ``positions[i]`` (for each of ``k`` copies)."""
    h = env.input
    if h.dim() != 3 or h.shape[0] != k * b or int(positions.max()) >= h.shape[1]:
        raise RuntimeError(
            f"the unembedding's input has shape {tuple(h.shape)}, not [{k * b}, seq > {int(positions.max())}, d_model]"
            ": this model's head does not read per-position hidden states; reduce a metric without positions."
        )
    rows = torch.arange(k * b, device=h.device)
    env.input = h[rows, positions.to(h.device).repeat(k)][:, None]
