"""The nn.Module face of HookedMLLM: device, dtype, parameters and state dict are the wrapped HF model's.

``HookedMLLM`` registers the HF model as its submodule ``hf_model`` (after naming its hook
points), so ``to`` / ``cuda`` / ``half`` / ``train`` / ``requires_grad_`` reach it; this mixin
gives ``parameters``, ``named_parameters``, ``state_dict`` and ``load_state_dict`` the HF
model's own names and keeps ``cfg.device`` / ``cfg.dtype`` true after every move.

Example::

    model = HookedMLLM.from_pretrained("tiny-llava").bfloat16()
    model.cfg.dtype                      # torch.bfloat16
    sorted(model.state_dict()) == sorted(model.hf_model.state_dict())   # True
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch import nn


class WrappedModule(nn.Module):
    """Mixin of :class:`~hooks_mm.HookedMLLM` (which has ``hf_model``, ``cfg`` and a prepared-batch memo)."""

    hf_model: nn.Module
    cfg: Any

    def _device(self) -> torch.device:
        try:
            return next(self.hf_model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def _dtype(self) -> torch.dtype:
        return next((p.dtype for p in self.hf_model.parameters() if p.is_floating_point()), torch.float32)

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Every ``to`` / ``cuda`` / ``half`` / ... lands here: move the HF model, then follow in ``cfg``."""
        super()._apply(fn, *args, **kwargs)
        self.cfg.device, self.cfg.dtype = self._device(), self._dtype()
        self.__dict__["_last_batch"] = None  # a remembered batch is on the old device / dtype
        return self

    def cuda(self, device: Any = None) -> Any:
        """Move to a CUDA device; a clear error where torch has none (torch's own is an AssertionError)."""
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"model.cuda(): no CUDA device is available to this torch ({torch.__version__}): keep the model on "
                "the CPU, or install a CUDA build of torch on a machine with a GPU (see the README)."
            )
        return super().cuda(device)

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True) -> Iterator:
        """The HF model's parameters under its own names (the hook points have none)."""
        return self.hf_model.named_parameters(prefix, recurse, remove_duplicate)

    def named_buffers(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True) -> Iterator:
        return self.hf_model.named_buffers(prefix, recurse, remove_duplicate)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The HF model's state dict, with its own keys (``model.hf_model.state_dict()``)."""
        return self.hf_model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load an HF state dict (the keys of :meth:`state_dict`) into the wrapped model."""
        out = self.hf_model.load_state_dict(state_dict, strict=strict, assign=assign)
        self.__dict__["_last_batch"] = None
        return out
