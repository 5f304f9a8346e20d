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


def block_tree(specs: Iterable[HookSpec]) -> Node:
    """One decoder block's hook points."""
    block = Node()
    for spec in specs:
        put(block, spec.name)
    return block
