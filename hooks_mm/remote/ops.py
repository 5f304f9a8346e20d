"""What runs inside an nnsight trace (locally or on an NDIF server): torch only.

This module is shipped by value with every remote request (``nnsight.register``), so it
must import nothing but torch: the server has torch, transformers and nnsight, not
hooks_mm. :mod:`hooks_mm.remote.compile` turns intervention specs into a *plan* of plain
data (module paths, tensors, op tuples); :func:`run` executes it in a trace.

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

Example (inside a trace)::

    with lm.trace(plan["inputs"]):
        values = ops.run(lm, plan, store).save()
"""

import torch
import torch.nn.functional as F


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


def _where(x, mask, new):
    shape = [1] * x.dim()
    shape[0], shape[1] = mask.shape
    return torch.where(mask.to(x.device).view(shape), new, x)


def _ablate(x, mask, idx, mode, value, rep):
    cols = x if idx is None else x[..., idx.to(x.device)]
    if mode == "zero":
        new = torch.zeros_like(cols)
    elif mode == "scale":
        new = cols * value
    elif mode == "set":
        new = torch.full_like(cols, value)
    else:
        new = rep.to(x) if idx is None else rep.to(x)[..., idx.to(x.device)]
    new = _where(cols, mask, new)
    if idx is None:
        return new
    x = x.clone()
    x[..., idx.to(x.device)] = new
    return x


def _grid(x, src, pairs):
    x = x.clone()
    for row, s_grid, t_grid in pairs:
        d = src.shape[-1]
        g = src[row, s_grid.flatten().to(src.device)].reshape(s_grid.shape[0], s_grid.shape[1], d)
        g = g.permute(2, 0, 1).unsqueeze(0).float()
        g = F.interpolate(g, size=tuple(t_grid.shape), mode="bilinear", align_corners=False)
        x[row, t_grid.flatten().to(x.device)] = g[0].permute(1, 2, 0).reshape(-1, d).to(x)
    return x


def apply(x, op, store):
    """One op on one config's rows ``x`` (``[b, seq, ...]``; ``[b, h, q, k]`` for masks)."""
    kind = op[0]
    if kind == "ablate":
        _, mask, idx, mode, value, rep = op
        if isinstance(rep, str):
            rep = store[rep]
        elif isinstance(rep, tuple):  # (table [n, d], index [b, s]): a per-position mean
            rep = rep[0][rep[1]]
        return _ablate(x, mask, idx, mode, value, rep)
    if kind == "steer":
        _, mask, vec, scale = op
        if x.shape[-1] != vec.shape[-1]:
            raise ValueError(f"Steer: vector has {vec.shape[-1]} dims but the activation has {x.shape[-1]}.")
        return _where(x, mask, x + scale * vec.to(x))
    if kind == "centroid":
        _, mask, centroids, a = op
        c = centroids.to(x)
        flat = x.flatten(0, 1)
        mu = c[torch.cdist(flat, c).argmin(-1)].view_as(x)
        return _where(x, mask, mu + a * (x - mu))
    if kind == "zero":
        return _where(x, op[1], torch.zeros_like(x))
    if kind == "copy":
        _, key, s_rows, s_cols, t_rows, t_cols = op
        x = x.clone()
        x[t_rows, t_cols] = store[key][s_rows, s_cols].to(x)
        return x
    if kind == "grid":
        return _grid(x, store[op[1]], op[2])
    if kind == "keep":  # remember this value (Skip of a whole block: resid_pre)
        store[op[1]] = x
        return x
    if kind == "restore":
        return _where(x, op[1], store.pop(op[2]))
    if kind == "knock":
        block = op[1].to(x.device)
        if x.dtype == torch.bool:
            return x & ~block
        return x.masked_fill(block, torch.finfo(x.dtype).min)
    raise ValueError(f"unknown op {kind!r}")


def _causal(b, q, device):
    return torch.ones(q, q, dtype=torch.bool, device=device).tril()[None, None].expand(b, 1, q, q)


def _edit(x, ops, b, store, attr):
    if attr == "mask":
        heads = max((op[1].shape[1] for _, op in ops if op[0] == "knock"), default=1)
        if x.shape[1] < heads:
            x = x.expand(x.shape[0], heads, x.shape[2], x.shape[3])
    x = x.clone()
    for k, op in ops:
        rows = slice(k * b, (k + 1) * b)
        x[rows] = apply(x[rows], op, store)
    return x


def _edit_mask(env, ops, b, store, n_rows):
    args, kwargs = env.inputs
    mask = kwargs.get("attention_mask")
    if mask is not None and not torch.is_tensor(mask):
        raise NotImplementedError(
            f"attention knockout edits the attention mask, but this model passes a {type(mask).__name__} "
            "(flex attention): load it with attn_implementation='sdpa' or 'eager'."
        )
    if mask is None:
        q = _first(args[0] if args else kwargs["hidden_states"]).shape[1]
        mask = _causal(n_rows, q, (args[0] if args else kwargs["hidden_states"]).device)
    elif mask.shape[0] != n_rows:
        mask = mask.expand(n_rows, *mask.shape[1:])
    env.inputs = (args, {**kwargs, "attention_mask": _edit(mask, ops, b, store, "mask")})


def run(lm, plan, store):
    """Execute ``plan`` inside an open trace of ``lm``; returns the reduced values or logits."""
    k, b = plan["copies"], plan["batch"]
    # the model sees exactly these keyword inputs (nnsight's own batching would add position_ids)
    lm.inputs = ((), {key: tile(v, k) for key, v in plan["inputs"].items()})
    for path, attr, ops in plan["sites"]:
        env = lm.get(path)
        if attr == "mask":
            _edit_mask(env, ops, b, store, k * b)
        elif attr == "input":
            env.input = _edit(env.input, ops, b, store, attr)
        else:
            out = env.output
            env.output = _with_first(out, _edit(_first(out), ops, b, store, attr))
    for key, path, attr in plan.get("capture", ()):
        env = lm.get(path)
        store[key] = env.input if attr == "input" else _first(env.output)
    reduce = plan.get("reduce")
    if reduce == "none":
        return None
    logits = lm.output.logits
    if reduce is None:
        return logits
    positions, fn = reduce
    values = []
    for i in range(k):
        part = logits[i * b : (i + 1) * b]
        if positions is not None:
            part = part[torch.arange(b, device=part.device), positions.to(part.device)]
        values.append(torch.as_tensor(fn(part)).detach().float().cpu())
    return torch.stack(values)
