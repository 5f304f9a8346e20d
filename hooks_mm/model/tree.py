"""The shadow tree of TransformerLens HookPoints, built from the hook table.

A block's tree holds one identity :class:`HookPoint` per row of
:func:`hooks_mm.hooks.block_hooks` at its dotted name (``ln1.hook_normalized`` becomes
``block.ln1.hook_normalized``), so ``HookedRootModule.setup()`` names them
``blocks.{l}.ln1.hook_normalized``, exactly as TransformerLens does.

Example::

    blocks = nn.ModuleList(block_tree(block_hooks(cross=False, gated=True, injection=False)) for _ in range(n))
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn
from transformer_lens.hook_points import HookPoint

from hooks_mm.hooks import HookSpec


class Node(nn.Module):
    """A container of hook points (a block, its ``attn``, ``mlp``, ``ln1`` ...)."""


def put(root: nn.Module, dotted: str) -> None:
    """Add a HookPoint at ``dotted`` under ``root``, creating the containers on the way."""
    *path, leaf = dotted.split(".")
    node = root
    for part in path:
        if not hasattr(node, part):
            setattr(node, part, Node())
        node = getattr(node, part)
    setattr(node, leaf, HookPoint())


def block_kinds(
    adapter: Any, l: int, cross: set[int], inject: set[int], moe: dict[int, tuple], mixers: dict[int, Any]
) -> dict[str, Any]:
    """The :func:`~hooks_mm.hooks.block_hooks` keywords of layer ``l``: cross-attention, gated MLP, first and second
    norm, injection after it, a MoE MLP (``moe``: layer -> sizes, the expert count first) or a non-attention
    mixer (``mixers``: layer -> mixer, a hybrid stack's linear-attention / convolution layers)."""
    kinds = dict(
        cross=l in cross,
        gated=adapter.gated,
        ln1=adapter.ln1 is not None,
        ln2=adapter.ln2 is not None,
        injection=l in inject,
        attention=l not in mixers,
    )
    if l in moe:
        kinds |= dict(experts=moe[l][0], shared=adapter.moe.shared is not None)
    return kinds


def block_tree(specs: Iterable[HookSpec]) -> Node:
    """One decoder block's hook points."""
    block = Node()
    for spec in specs:
        put(block, spec.name)
    return block
