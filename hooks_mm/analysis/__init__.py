"""The research analyses as library calls (see the README's Analyses section).

- :mod:`.neurons`: modality-specific neurons (LAPE, top-k% difference), neuron-masking matrix,
  over any set of modalities (text / image / video / audio)
- :mod:`.alignment`: implicit multimodal alignment (any set of modalities), MaxSim/MedSim,
  drift, norms, attention flow
- :mod:`.sequence`: GAK and soft-DTW between interleaved sequences of hidden states
- :mod:`.weights`: activated-weight overlap (Wanda masks calibrated per modality, IoU)
- :mod:`.erasure`: centroid erasure cost, TCCD (with alpha search), VCD, text-centric bias
- :mod:`.lens` / :mod:`.dla`: the logit lens and direct logit attribution at every image patch, on the patch grid
- :mod:`.decoding`: contrastive decoding as generation (VCD, TCCD or any spec as the reference run)
"""

from hooks_mm.analysis.alignment import (
    MODALITY_SELECTORS,
    PooledModalities,
    alignment_matrix,
    attention_flow,
    cross_modal_cosine,
    drift,
    global_cosine,
    last_token_heatmaps,
    max_med_sim,
    pooled_by_modality,
    pooled_embeddings,
    token_similarity,
)
from hooks_mm.analysis.decoding import Reference, contrastive_generate, spec_reference, tccd, vcd
from hooks_mm.analysis.dla import FrozenNorm, PatchDLA, patch_dla  # issue 16
from hooks_mm.analysis.erasure import (
    accuracy,
    choice_score,
    erasure_cost,
    skip_tradeoff,
    tccd_logits,
    text_centric_bias,
    tune_tccd,
    vcd_logits,
)
from hooks_mm.analysis.lens import ImagePositions, LensRow, PatchLens, image_positions, patch_logit_lens  # issue 16
from hooks_mm.analysis.neurons import activation_probabilities, lape, mask_spec, neuron_masking_matrix, top_difference
from hooks_mm.analysis.sequence import gak_similarity, log_gak, sequence_elements, soft_dtw
from hooks_mm.analysis.weights import input_norms, wanda_mask, wanda_overlap

__all__ = [
    "accuracy",
    "choice_score",
    "erasure_cost",
    "skip_tradeoff",
    "tccd_logits",
    "text_centric_bias",
    "tune_tccd",
    "vcd_logits",
    "MODALITY_SELECTORS",
    "PooledModalities",
    "alignment_matrix",
    "pooled_by_modality",
    "activation_probabilities",
    "attention_flow",
    "cross_modal_cosine",
    "drift",
    "gak_similarity",
    "global_cosine",
    "lape",
    "last_token_heatmaps",
    "log_gak",
    "mask_spec",
    "max_med_sim",
    "neuron_masking_matrix",
    "pooled_embeddings",
    "sequence_elements",
    "soft_dtw",
    "token_similarity",
    "top_difference",
    "input_norms",
    "wanda_mask",
    "wanda_overlap",
    # issue 16: logit lens and DLA over image patches
    "FrozenNorm",
    "ImagePositions",
    "LensRow",
    "PatchDLA",
    "PatchLens",
    "image_positions",
    "patch_dla",
    "patch_logit_lens",
]
__all__ += ["Reference", "contrastive_generate", "spec_reference", "tccd", "vcd"]  # issue 16
