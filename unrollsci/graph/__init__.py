"""Graph signal inversion: Laplacian-regularized inverse problems on graphs, solved by an
unrolled gradient descent whose steps a GNN chooses inside certified stability bounds.

    from unrollsci.graph import GraphInverseProblem, StepController, UnrolledGraphGD
"""

from ._controller import (
    GLOBAL_FEATURES,
    LOCAL_FEATURES,
    NODE_FEATURES,
    StepController,
    certify_window,
)
from ._data import (
    inpainting_problem,
    load_minnesota,
    random_graph,
    road_graph,
    sensor_graph,
    smooth_signal,
)
from ._graphcert import clear_cache as clear_graph_cache
from ._laplacian import HeatKernel, chebyshev_coefficients, laplacian_matrix, validate_adjacency
from ._loss import graph_loss
from ._model import MODES, GraphGDResult, UnrolledGraphGD
from ._problem import GraphInverseProblem
from ._pyg import CACHED_ATTRS, CertifiedBounds, problem_from_data

__all__ = [
    "CACHED_ATTRS",
    "CertifiedBounds",
    "GLOBAL_FEATURES",
    "LOCAL_FEATURES",
    "MODES",
    "NODE_FEATURES",
    "GraphGDResult",
    "GraphInverseProblem",
    "HeatKernel",
    "StepController",
    "UnrolledGraphGD",
    "certify_window",
    "chebyshev_coefficients",
    "clear_graph_cache",
    "graph_loss",
    "inpainting_problem",
    "laplacian_matrix",
    "problem_from_data",
    "load_minnesota",
    "random_graph",
    "road_graph",
    "sensor_graph",
    "smooth_signal",
    "validate_adjacency",
]
