"""A norm module seen as a linear map with a frozen scale: what the cache analyses apply to residual components.

Every norm hooks_mm meets is ``y = w * centre(x) / s(x) + b``: RMSNorm (no centring, no bias), Gemma's RMSNorm
(weight ``1 + w``), LayerNorm (centred, with bias), Cohere's LayerNorm (centred, no bias), ``nn.Identity``.
:func:`norm_form` reads which one a module is from its class and attributes and CHECKS the reading against the
module's own output on the real residual (a norm of another form is refused, named): a wrong form is never used.
With ``s`` taken from the real residual ``x = sum_i c_i``, ``sum_i w * centre(c_i) / s + b == module(x)``.

Example::

    form = norm_form(model.submodule(model.adapter.final_norm), resid_final)
    parts = form.apply(stack, form.scale(resid_final))     # [n, batch, pos, d_model]; + form.bias_term
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn


@dataclass(frozen=True)
class NormForm:
    """``y = weight * centre(x) / scale(x) + bias`` (``identity``: y = x)."""

    name: str
    centre: bool
    weight: Tensor | None  # the effective per-channel weight (Gemma: 1 + w); None: 1
    bias: Tensor | None
    eps: float
    identity: bool = False

    def scale(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... 1"]:
        """The norm's denominator on the real input ``x`` (float32): sqrt(mean(centre(x)^2) + eps)."""
        x = x.float()
        if self.identity:
            return x.new_ones(*x.shape[:-1], 1)
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def apply(self, parts: Float[Tensor, "... d_model"], scale: Tensor) -> Float[Tensor, "... d_model"]:
        """Each part through the norm with the frozen ``scale`` (bias not added: see ``bias_term``)."""
        if self.identity:
            return parts
        x = parts.float()
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        x = x / scale
        if self.weight is not None:
            x = x * self.weight.float()
        return x.to(parts.dtype)

    @property
    def bias_term(self) -> Tensor | None:
        """The norm's constant term (LayerNorm's bias) or None."""
        return None if self.identity or self.bias is None else self.bias.detach()

    def full(self, x: Tensor) -> Tensor:
        out = self.apply(x, self.scale(x)).float()
        return out if self.bias_term is None else out + self.bias_term.float()


def norm_form(module: nn.Module, x: Float[Tensor, "... d_model"], where: str = "") -> NormForm:
    """The :class:`NormForm` of ``module``, checked against ``module(x)`` on the real input ``x``.

    ``where`` names the norm in errors (``"blocks.3 ln1"``).
    """
    name = type(module).__name__
    if isinstance(module, nn.Identity):
        return NormForm(name, False, None, None, 0.0, identity=True)
    eps = next(
        (float(v) for k in ("eps", "variance_epsilon", "epsilon") if (v := getattr(module, k, None)) is not None), None
    )
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    weight = weight.detach() if isinstance(weight, Tensor) else None
    bias = bias.detach() if isinstance(bias, Tensor) else None
    if eps is None:
        raise NotImplementedError(
            f"the norm {where} ({name}) has no eps / variance_epsilon: hooks_mm cannot read it as a linear map with "
            "a frozen scale; analyse the residual without apply_ln (apply_ln=False)."
        )
    layer_norm = isinstance(module, nn.LayerNorm) or ("LayerNorm" in name and "RMS" not in name)
    centres = (True, False) if layer_norm else (False, True)
    weights = [weight, None if weight is None else 1.0 + weight] if weight is not None else [None]
    with torch.no_grad():
        ref = module(x).float()
        tol = (1e-4 if x.dtype == torch.float32 else 3e-2) * max(1.0, ref.abs().max().item())
        for centre in centres:
            for w in weights:
                form = NormForm(name, centre, w, bias, eps)
                if (form.full(x) - ref).abs().max().item() <= tol:
                    return form
    raise NotImplementedError(
        f"the norm {where} ({name}) is not w * centre(x) / sqrt(mean(centre(x)^2) + eps) + b for any reading "
        "hooks_mm knows (RMSNorm, Gemma's 1 + w, LayerNorm): its contribution cannot be split over residual "
        "components; analyse the residual without apply_ln (apply_ln=False)."
    )
