"""The benchmarks' nnsight baseline: an nnsight wrapper for HF multimodal models whose invokes batch together.

nnsight's generic ``NNsight`` runs one invoke per trace; a multimodal model's inputs are a
dict of tensors (input_ids, attention_mask, pixel_values, image_grid_thw, ...) that batch
by concatenation along their leading dimension. ``MultimodalNNsight`` says so, so that
several invokes (e.g. one per ablation config) run as one batched forward, each with its
own interventions on its own rows.

Example::

    nn_model = MultimodalNNsight(hf_model)
    with nn_model.trace() as tracer:
        for j in neurons:
            with tracer.invoke(**inputs):
                nn_model.model.language_model.layers[0].mlp.down_proj.input[:, :, j] = 0
                outs.append(nn_model.output.logits.save())
"""

from __future__ import annotations

from typing import Any

import torch
from nnsight import NNsight


class MultimodalNNsight(NNsight):
    def _batch_size(self, *inputs: Any, **kwargs: Any) -> int:
        ids = kwargs.get("input_ids", inputs[0] if inputs else None)
        return int(ids.shape[0]) if torch.is_tensor(ids) else super()._batch_size(*inputs, **kwargs)

    def _batch(self, invokes: list[tuple], fn: Any) -> tuple:
        if len(invokes) <= 1:
            return super()._batch(invokes, fn)
        kwargs = [kw for _, kw in invokes]
        keys = kwargs[0].keys()
        if any(kw.keys() != keys for kw in kwargs) or any(args for args, _ in invokes):
            raise ValueError(
                "batched invokes need the same keyword inputs (input_ids=..., pixel_values=...) in every invoke."
            )
        lengths = {kw["input_ids"].shape[-1] for kw in kwargs}
        if len(lengths) > 1:
            raise ValueError(
                f"batched invokes need equal sequence lengths (got {sorted(lengths)}): pad the inputs together first."
            )
        merged = {
            k: torch.cat([kw[k] for kw in kwargs]) if torch.is_tensor(kwargs[0][k]) else kwargs[0][k] for k in keys
        }
        return (), merged
