"""The operations of every intervention spec: what happens to an activation at a site. Torch only.

A spec resolves against a batch into :class:`~hooks_mm.interventions.base.Edit`\\ s: a hook
name and an *op*, a plain tuple ``(kind, *args)`` of tensors and numbers. :func:`apply`
executes an op, and every backend calls it: local hook functions, nnsight traces (this
module is shipped by value with each NDIF request, so it imports nothing but torch), the
sweep's fast path and attribution patching.

Ops (``mask``: bool ``[batch, seq]`` positions; ``key``: an entry of ``store``, the
activations read from other runs and values kept within a forward):

- ``("ablate", mask, idx, mode, value, rep)``: neurons ``idx`` (None: all) set to zero /
  scaled by / set to ``value``, or replaced by ``rep`` (a ``key``, or ``(table, index)``: a
  per-position row of a table of means);
- ``("steer", mask, vector, scale)``: add ``scale * vector``;
- ``("centroid", mask, centroids, a)``: ``mu + a (x - mu)``, ``mu`` the nearest centroid;
- ``("zero", mask)``;
- ``("copy", key, s_rows, s_cols, t_rows, t_cols, shape)``: source positions into target
  positions (``shape``: the target layout's (batch, seq));
- ``("grid", key, pairs, shape)``: per image tile, the source patch grid resampled (bilinear)
  onto the target grid;
- ``("keep", key)`` / ``("restore", mask, key)``: remember a value, write it back later in
  the forward;
- ``("knock", block)``: attention edges ``block`` [batch, head or 1, q, k] removed from
  scores (float) or from a boolean attention mask.

:func:`step` restricts an op compiled over prompt + generated positions to the positions one
generation step computes (``HookedMLLM.generate(interventions=...)``).

Example::

    x = apply(x, ("steer", mask, vector, 4.0), store={})
"""

import torch
import torch.nn.functional as F


def check_shape(x, shape, pos_dim=1):
    """An error unless ``x``'s batch and position axes have the layout's ``shape`` (batch, seq)."""
    if x.shape[0] != shape[0] or x.shape[pos_dim] != shape[1]:
        raise ValueError(
            f"activation shape {tuple(x.shape)} does not match the layout {tuple(shape)} the intervention was "
            "compiled for: an op compiled for a full forward of one batch runs on that batch: compile the spec for "
            "this run (run_with_interventions(batch, spec)). In generation pass the spec as "
            "generate(inputs, interventions=spec), which runs each op on the positions of every KV-cached step "
            "(a raw hook can read them from model.positions)."
        )


def where(x, mask, new, pos_dim=1):
    """``x`` with ``new`` at the positions ``mask`` [batch, seq] selects (out of place)."""
    check_shape(x, mask.shape, pos_dim)
    shape = [1] * x.dim()
    shape[0], shape[pos_dim] = mask.shape
    return torch.where(mask.to(x.device).view(shape), new, x)


def ablate(x, mask, idx, mode, value, rep):
    """Neurons ``idx`` (None: all) of ``x`` replaced at ``mask`` as ``mode`` says."""
    if idx is not None:
        idx = idx.to(x.device)
    cols = x if idx is None else x[..., idx]
    if mode == "zero":
        new = torch.zeros_like(cols)
    elif mode == "scale":
        new = cols * value
    elif mode == "set":
        new = torch.full_like(cols, value)
    else:
        rep = rep.to(x)
        new = rep if idx is None else rep[..., idx]
    new = where(cols, mask, new)
    if idx is None:
        return new
    x = x.clone()
    x[..., idx] = new
    return x


def grid(x, src, pairs):
    """Per ``(row, source grid, target grid)``: the source tile resampled onto the target tile."""
    x = x.clone()
    for row, s_grid, t_grid in pairs:
        d = src.shape[-1]
        g = src[row, s_grid.flatten().to(src.device)].reshape(s_grid.shape[0], s_grid.shape[1], d)
        g = g.permute(2, 0, 1).unsqueeze(0).float()
        g = F.interpolate(g, size=tuple(t_grid.shape), mode="bilinear", align_corners=False)
        x[row, t_grid.flatten().to(x.device)] = g[0].permute(1, 2, 0).reshape(-1, d).to(x)
    return x


def knock(x, block):
    """Remove the attention edges ``block`` from scores (float: dtype minimum) or a bool mask."""
    if x.shape[-2:] != block.shape[-2:]:
        raise ValueError(
            f"attention scores {tuple(x.shape)} do not match the layout {tuple(block.shape[-2:])}: "
            "knockout applies to a full forward of the inputs it was compiled for (in generation pass the spec as "
            "generate(inputs, interventions=spec))."
        )
    block = block.to(x.device)
    if x.dtype == torch.bool:
        return x & ~block
    return x.masked_fill(block, torch.finfo(x.dtype).min)


def apply(x, op, store):
    """Run one op on ``x`` (``[batch, seq, ...]``; ``[batch, head, q, k]`` for ``knock``)."""
    kind = op[0]
    if kind == "ablate":
        _, mask, idx, mode, value, rep = op
        if isinstance(rep, str):
            rep = store[rep]
        elif isinstance(rep, tuple):  # (table [n, d], index [b, s]): a per-position mean
            rep = rep[0].to(x.device)[rep[1].to(x.device)]
        return ablate(x, mask, idx, mode, value, rep)
    if kind == "steer":
        _, mask, vec, scale = op
        if x.shape[-1] != vec.shape[-1]:
            raise ValueError(f"Steer: vector has {vec.shape[-1]} dims but the activation has {x.shape[-1]}.")
        return where(x, mask, x + scale * vec.to(x))
    if kind == "centroid":
        _, mask, centroids, a = op
        c = centroids.to(x)
        mu = c[torch.cdist(x.flatten(0, 1), c).argmin(-1)].view_as(x)
        return where(x, mask, mu + a * (x - mu))
    if kind == "zero":
        return where(x, op[1], torch.zeros_like(x))
    if kind == "copy":
        _, key, s_rows, s_cols, t_rows, t_cols, shape = op
        check_shape(x, shape)
        x = x.clone()
        x[t_rows, t_cols] = store[key][s_rows, s_cols].to(x)
        return x
    if kind == "grid":
        check_shape(x, op[3])
        return grid(x, store[op[1]], op[2])
    if kind == "keep":
        store[op[1]] = x
        return x
    if kind == "restore":
        return where(x, op[1], store.pop(op[2]))
    if kind == "knock":
        return knock(x, op[1])
    raise ValueError(f"unknown op {kind!r}")


def step(op, positions, n_keys=None, store=None):
    """``op`` (compiled on a layout over prompt + generated positions) restricted to one generation step.

    ``positions``: the contiguous absolute positions the step computes (the prefill: the whole
    prompt; a KV-cached step: one position); ``n_keys``: the keys its attention scores hold
    (default every position up to the step's last: a dynamic cache; fewer: a sliding-window
    cache holding the most recent ones; more: a static cache, whose extra keys are not
    knocked out). Masks and per-position tables are sliced to the step, copy and grid
    targets filtered to it and shifted, a knockout block cut to ``[..., step queries, keys]``;
    a ``resample`` source read is sliced here from ``store``. None: nothing to do this step.

    Example::

        s = step(("steer", mask, v, 2.0), torch.arange(40, 41))   # mask[:, 40:41]
        x = x if s is None else apply(x, s, store)
    """
    p0, n = int(positions[0]), len(positions)
    if n != int(positions[-1]) - p0 + 1:
        raise ValueError(f"generation step positions {positions.tolist()} are not contiguous.")
    end = p0 + n
    kind = op[0]

    def cut(mask):
        if mask.shape[-1] < end:
            raise ValueError(
                f"this generation step computes positions {p0}..{end - 1}, past the {mask.shape[-1]} positions "
                "the intervention was compiled for (prompt + max_new_tokens): generate no more than "
                "max_new_tokens tokens (pass max_new_tokens, not max_length)."
            )
        return mask[..., p0:end]

    if kind == "ablate":
        _, mask, idx, mode, value, rep = op
        m = cut(mask)
        if isinstance(rep, str):  # a source run's activations [batch, source seq, d]
            if not bool(m.any()):
                return None
            src = store[rep]
            n_src = src.shape[1]
            if bool(m[:, max(n_src - p0, 0) :].any()):
                raise ValueError(
                    f"this generation step edits positions {p0}..{end - 1}, past the {n_src} positions of the "
                    "source run the edit reads: select source positions that exist."
                )
            rep = src[:, p0 : min(end, n_src)]  # positions past the source (not edited, use_cache=False): zeros
            rep = torch.cat([rep, rep.new_zeros(rep.shape[0], end - p0 - rep.shape[1], *rep.shape[2:])], 1)
        elif isinstance(rep, tuple):  # (table, index [batch, seq])
            rep = (rep[0], cut(rep[1]))
        return ("ablate", m, idx, mode, value, rep)
    if kind in ("steer", "centroid", "zero", "restore"):
        return (kind, cut(op[1]), *op[2:])
    if kind == "keep":
        return op
    if kind == "copy":
        _, key, s_rows, s_cols, t_rows, t_cols, shape = op
        inside = (t_cols >= p0) & (t_cols < end)
        if not bool(inside.any()):
            return None
        return ("copy", key, s_rows[inside], s_cols[inside], t_rows[inside], t_cols[inside] - p0, (shape[0], n))
    if kind == "grid":
        _, key, pairs, shape = op
        kept = []
        for row, s_grid, t_grid in pairs:
            inside = (t_grid >= p0) & (t_grid < end)
            if bool(inside.all()):
                kept.append((row, s_grid, t_grid - p0))
            elif bool(inside.any()):
                raise ValueError(
                    f"an image tile of row {row} lies partly in generation step positions {p0}..{end - 1}; "
                    "a tile's patch grid is resampled as a whole in one forward."
                )
        return ("grid", key, kept, (shape[0], n)) if kept else None
    if kind == "knock":
        block = cut(op[1].transpose(-1, -2)).transpose(-1, -2)[..., :end]  # [b, h, step queries, keys 0..end-1]
        n_keys = end if n_keys is None else int(n_keys)
        if n_keys <= end:
            return ("knock", block[..., end - n_keys :])
        pad = torch.zeros(*block.shape[:-1], n_keys - end, dtype=block.dtype, device=block.device)
        return ("knock", torch.cat([block, pad], -1))
    raise ValueError(f"unknown op {kind!r}")
