"""Visualizations: offline circuitsvis views with image spans collapsed, image-patch
heatmaps for every grid type, audio strips along time and video frame grids, plots, and a
self-contained HTML report.

Example::

    from hooks_mm.vis import attention_heads, patch_heatmap, str_tokens
    logits, cache = model.run_with_cache(inputs)
    layout, tokens = model.layout(inputs), str_tokens(model, inputs, row=0)
    attention_heads(cache["blocks.0.attn.hook_pattern"], tokens, layout, row=0)
    patch_heatmap(cache["blocks.0.attn.hook_pattern"][0, :, -1].mean(0), layout, row=0).savefig("a.png")
"""

from hooks_mm.vis.circuits import attention_heads, attention_pattern, colored_tokens, neuron_activations, topk_tokens
from hooks_mm.vis.common import str_tokens
from hooks_mm.vis.findings import curve_figure, finding_figure  # issue 19
from hooks_mm.vis.graph import GraphHTML, graph_figure, graph_html  # issue 18
from hooks_mm.vis.heatmap import PatchHeatmapHTML, patch_heatmap, patch_heatmap_html
from hooks_mm.vis.html import Vis, page
from hooks_mm.vis.lens import dla_heatmap, dla_heatmap_html, logit_lens_figure, logit_lens_html  # issue 16
from hooks_mm.vis.media import (
    AudioTrack,
    VideoMap,
    audio_strip,
    audio_strip_html,
    audio_tracks,
    video_frames,
    video_frames_html,
    video_maps,
)
from hooks_mm.vis.patches import ImageMap, Panel, patch_maps, tile_grid_from_tokens
from hooks_mm.vis.spans import Units, collapse_attention, reduce, units

__all__ = [
    "AudioTrack",
    "VideoMap",
    "audio_strip",
    "audio_strip_html",
    "audio_tracks",
    "video_frames",
    "video_frames_html",
    "video_maps",
    "ImageMap",
    "Panel",
    "PatchHeatmapHTML",
    "Units",
    "Vis",
    "attention_heads",
    "attention_pattern",
    "collapse_attention",
    "colored_tokens",
    "neuron_activations",
    "page",
    "patch_heatmap",
    "patch_heatmap_html",
    "patch_maps",
    "reduce",
    "str_tokens",
    "tile_grid_from_tokens",
    "topk_tokens",
    "units",
    # issue 16: the per-patch logit lens and DLA views
    "dla_heatmap",
    "dla_heatmap_html",
    "logit_lens_figure",
    "logit_lens_html",
    # issue 18: circuit graph views
    "GraphHTML",
    "graph_figure",
    "graph_html",
    # issue 19: findings with their controls beside them, and the findings' curves with their intervals
    "curve_figure",
    "finding_figure",
]
