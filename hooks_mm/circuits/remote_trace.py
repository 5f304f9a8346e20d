"""What runs inside the nnsight session of a remote :func:`hooks_mm.circuits.eap_graph` (on the NDIF server). Torch
only.

Shipped by value with the request (``nnsight.register``, like :mod:`hooks_mm.remote.runner`): it imports nothing but
torch. Two traces in one session: :func:`corrupted_run` (the corrupted batch, or the clean one with its input nodes'
embeddings ablated) keeps what every node writes; :func:`run` runs ``steps`` copies of the clean batch, copy ``k``
with its embeddings moved ``k / steps`` of the way to the corrupted ones (``k = 0``: the clean run; ``steps = 1``:
EAP). Those embeddings are a fresh leaf that requires grad (the server's weights are frozen), so the graph starts
there. One backward of the metric summed over the copies, then one VJP per head through the attention branch, and
the edge scores are reduced here: only ``[edges]`` scores, ``[nodes]`` node scores, the two metric values and the
bookkeeping checks come back (module :mod:`hooks_mm.circuits.remote`). Corrupted and clean inputs never share a
forward: index-valued inputs (Molmo2's ``image_token_pooling``) would point the clean copies at the corrupted
images' features.

A plan is a dict: ``inputs`` / ``corrupted`` (keyword inputs of one copy; ``corrupted`` None for an ablation),
``ablate`` (``"zero"`` / ``"mean"`` / None) with ``masks`` [node, batch, seq] (the input nodes), ``real`` [batch, seq]
(non-pad positions), ``batch``, ``steps``, ``layers`` (per layer: its path, its o-projection's path, its MLP output
path), ``heads`` / ``d_head``, ``reduce`` (``(positions, fn)``: the metric is ``fn(logits[rows, positions])`` per
copy, or ``(None, fn)``: ``fn(logits)``), ``use_cache``.

Example (inside a session)::

    store = {}
    with lm.trace(**remote_trace.model_inputs(plan, corrupted=True)):
        remote_trace.corrupted_run(lm, plan, store)
    with lm.trace(**remote_trace.model_inputs(plan)):
        out = nnsight.save(remote_trace.run(lm, plan, store))
"""

import torch


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def tile(value, k):
    """``k`` copies of a batch along dim 0 (tensors, lists). Index-valued inputs (Molmo2's ``image_token_pooling``)
    keep pointing at the first copy's features, which every copy shares: only identical copies are tiled."""
    if torch.is_tensor(value) and value.dim() > 0:
        return value.repeat(k, *([1] * (value.dim() - 1)))
    if isinstance(value, list):
        return value * k
    return value


def model_inputs(plan, corrupted=False):
    """The keyword inputs of a forward: the corrupted batch once (``corrupted``; the clean one for an ablation),
    else ``steps`` copies of the clean batch."""
    if corrupted:
        kwargs = dict(plan["corrupted"] if plan["corrupted"] is not None else plan["inputs"])
    else:
        kwargs = {key: tile(v, plan["steps"]) for key, v in plan["inputs"].items()}
    if plan.get("use_cache") is False:
        kwargs["use_cache"] = False
    return kwargs


def _ablate(kind, masks, x):
    out = x.clone()
    for mk in masks.to(x.device):
        fill = torch.zeros_like(x[0, 0]) if kind == "zero" else x[mk].mean(0)
        out[mk] = fill.to(x.dtype)
    return out


def _metric(logits, reduce, b):
    positions, fn = reduce
    if positions is None:
        return fn(logits)
    rows = torch.arange(b, device=logits.device)
    return fn(logits[rows, positions.to(logits.device)])


def _grad(out, inp, g):
    (got,) = torch.autograd.grad(out, inp, g, retain_graph=True)  # never unused: a branch reads its input
    return got


def _mean_steps(g, b, m):
    """[m b, ...] gradients -> the mean over the m copies, float32 [b, ...]."""
    return g.float().reshape(m, b, *g.shape[1:]).mean(0)


def _check(diff, vjp):
    return [float(diff.abs().max()), float(vjp.abs().max()), float((vjp - diff).abs().max())]


def corrupted_run(lm, plan, store):
    """The corrupted forward (inside its own trace): what each node writes, kept in ``store`` for :func:`run`."""
    b, layers = plan["batch"], plan["layers"]
    env0 = lm.get(layers[0][0])
    x = _first(env0.input)
    if plan["ablate"]:
        x = _ablate(plan["ablate"], plan["masks"], x)
        env0.input = x
    store["emb"] = x.detach()
    store["z"], store["mlp"] = [], []
    for _, opath, mpath in layers:
        store["z"].append(lm.get(opath).input.detach())
        store["mlp"].append(_first(lm.get(mpath).output).detach())
    store["value"] = _metric(lm.output.logits[:b].detach(), plan["reduce"], b)


def run(lm, plan, store):
    """The clean forward of ``steps`` copies (inside its own trace, after :func:`corrupted_run`), the backward and
    the score reduction of one remote EAP request."""
    b, m, nh, dh = plan["batch"], plan["steps"], plan["heads"], plan["d_head"]
    layers = plan["layers"]
    n_layers = len(layers)
    # -- forward: capture what every node writes and reads
    env0 = lm.get(layers[0][0])
    clean0 = _first(env0.input)[:b]
    corr0 = store["emb"].to(clean0.device)
    emb = torch.cat([clean0 + (k / m) * (corr0 - clean0) for k in range(m)]).detach().requires_grad_(True)
    env0.input = emb
    pre, z, attn, mlp, post = [emb], [], [], [], []
    for i, (lpath, opath, mpath) in enumerate(layers):
        if i > 0:
            pre.append(_first(lm.get(lpath).input))
        o = lm.get(opath)
        z.append(o.input)
        attn.append(_first(o.output))
        mlp.append(_first(lm.get(mpath).output))
        post.append(_first(lm.get(lpath).output))
    logits = lm.output.logits
    if logits.grad_fn is None:  # a leaf (or no grad): not the graph of this forward, so every gradient would be 0
        raise RuntimeError(
            "eap_graph: no gradients are served here: the logits this trace reads carry no autograd graph back to the "
            "embeddings (the trace runs apart from the model's forward, e.g. in a sandbox runner)."
        )
    value_corr = store["value"]
    values = [_metric(logits[b * k : b * (k + 1)], plan["reduce"], b) for k in range(m)]
    bad = [v for v in values if not torch.is_tensor(v) or v.dim() != 0 or not v.requires_grad]
    if bad:
        raise ValueError(
            f"eap_graph: the metric gave {bad[0]!r} on the server, not one scalar tensor that depends on the logits: "
            "reduce it to a scalar (e.g. .mean()) computed from the logits with torch operations."
        )
    total = sum(values)
    # -- backward: residual gradients, then each head's input gradient by its own VJP
    wrt = pre + attn + post + z
    got = torch.autograd.grad(total, wrt, retain_graph=True)  # every captured activation reaches the metric
    g_pre = [_mean_steps(g, b, m) for g in got[:n_layers]]
    g_mid = [_mean_steps(g, b, m) for g in got[n_layers : 2 * n_layers]]
    g_post = [_mean_steps(g, b, m) for g in got[2 * n_layers : 3 * n_layers]]
    g_z = got[3 * n_layers :]
    # -- scores, reduced here: writers in node order, each reader against the writers before it; one layer's
    # per-head reader gradients [h b p d] live at a time
    real = plan["real"].to(emb.device).float()
    masks = plan["masks"].to(emb.device).float()
    ediff = (corr0 - clean0).detach().float()
    dz = [(zc.to(zz.device) - zz[:b]).detach().float() * real[..., None] for zc, zz in zip(store["z"], z)]
    md = [(mc.to(mm.device) - mm[:b]).detach().float() * real[..., None] for mc, mm in zip(store["mlp"], mlp)]

    def head_diff(i):  # [b p h d_model]: z_h @ W_O[h] of the corrupted run minus the clean one
        w = lm.get(layers[i][1]).weight.detach().float().T.reshape(nh, dh, -1)
        return torch.einsum("bphd,hdm->bphm", dz[i].reshape(*dz[i].shape[:2], nh, dh), w)

    def against(g, upto_layer, with_heads_of=None):
        """Scores of readers ``g`` [k b p d] against the writers before them, flat [k * writers]."""
        cols = [torch.einsum("nbp,kbp->kn", masks, (ediff * g).sum(-1))]
        for j in range(upto_layer):
            cols.append(torch.einsum("bphd,kbpd->kh", head_diff(j), g))
            cols.append(torch.einsum("bpd,kbpd->k", md[j], g)[:, None])
        if with_heads_of is not None:
            cols.append(torch.einsum("bphd,kbpd->kh", head_diff(with_heads_of), g))
        return torch.cat(cols, 1).reshape(-1)

    scores, checks = [], []
    node_scores = [torch.einsum("nbp,bp->n", masks, (ediff * g_pre[0]).sum(-1))]
    for i in range(n_layers):
        per = []
        for h in range(nh):  # each head's input gradient: dM/dz_h back to resid_pre through the attention branch
            gz = torch.zeros_like(g_z[i])
            gz[..., h * dh : (h + 1) * dh] = g_z[i][..., h * dh : (h + 1) * dh]
            per.append(_mean_steps(_grad(z[i], pre[i], gz), b, m))
        g_heads = torch.stack(per)
        mlp_vjp = _mean_steps(_grad(mlp[i], attn[i], got[2 * n_layers + i]), b, m)  # resid_mid = pre + attn_out
        checks.append(_check(g_pre[i] - g_mid[i], g_heads.sum(0)) + _check(g_mid[i] - g_post[i], mlp_vjp))
        with torch.no_grad():
            scores.append(against(g_heads, i))
            scores.append(against((g_mid[i] - g_post[i])[None], i, with_heads_of=i))
            node_scores.append(torch.einsum("bphd,bpd->h", head_diff(i), g_mid[i]))
            node_scores.append((md[i] * g_post[i]).sum()[None])
        del g_heads, per
    with torch.no_grad():
        scores.append(against(g_post[-1][None], n_layers))
        node_scores.append(torch.zeros(1, device=emb.device))
        return {
            "scores": torch.cat(scores).cpu(),
            "node_scores": torch.cat(node_scores).cpu(),
            "metric_clean": float(values[0].detach()),
            "metric_corrupted": float(torch.as_tensor(value_corr).detach().float().mean()),
            "checks": torch.tensor(checks),
        }
