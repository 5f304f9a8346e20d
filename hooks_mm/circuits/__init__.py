"""Circuit graphs of multimodal answers (issue 18, in progress): the :class:`Graph` value, nodes built from the
layout, EAP / EAP-IG edge scores.

Example::

    from hooks_mm.circuits import eap_graph
    g = eap_graph(model, clean, corrupted, metric=answer_logprob(model, clean), inputs="cell")
    g.top_edges(10)
"""

from hooks_mm.circuits.eap import eap_graph
from hooks_mm.circuits.graph import Graph, Node
from hooks_mm.circuits.neuronpedia import from_neuronpedia, to_neuronpedia  # i18-vis: Neuronpedia JSON
from hooks_mm.circuits.nodes import input_nodes

__all__ = ["Graph", "Node", "eap_graph", "input_nodes"]

# --- i18-faith: exact edge patching, circuits, faithfulness, agreement (circuits/patching.py, faithfulness.py,
# agreement.py)
from hooks_mm.circuits.agreement import Agreement, eap_agreement  # noqa: E402
from hooks_mm.circuits.faithfulness import (  # noqa: E402
    EdgePatcher,
    Faithfulness,
    faithfulness,
    faithfulness_curve,
    select_circuit,  # noqa: E402
)

__all__ += ["Agreement", "EdgePatcher", "Faithfulness", "eap_agreement", "faithfulness", "faithfulness_curve"]
__all__ += ["select_circuit"]
__all__ += ["from_neuronpedia", "to_neuronpedia"]  # i18-vis

# --- i18-remote: eap_graph(..., remote=) through nnsight / NDIF (circuits/remote.py, remote_trace.py); its error
# is imported on first use, so that importing hooks_mm.circuits does not import nnsight
__all__ += ["GradientsNotServedError"]


def __getattr__(name: str) -> object:
    if name == "GradientsNotServedError":
        from hooks_mm.circuits.remote import GradientsNotServedError

        return GradientsNotServedError
    raise AttributeError(f"module 'hooks_mm.circuits' has no attribute {name!r}")


# --- i18-nb: circuit selection rules and connected circuits (circuits/selection.py)
from hooks_mm.circuits.selection import connected_edges  # noqa: E402

__all__ += ["connected_edges"]
