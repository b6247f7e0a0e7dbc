"""Curvature of the training loss: Hessian-vector products, trace, top eigenvalue and diagonal.

Implements the curvature primitives of ``NORMALIZED_SHARPNESS.md`` §4-5 (Tsuzuku, Sato and
Sugiyama 2020): the Hessian trace of paper eq 6, and four estimators of the Hessian diagonal of
every weight matrix, the ``F_l`` of normalized sharpness (paper eqs 29-31, 35).

Every quantity is taken of the **training loss** ``L(θ) = (1/N) Σ_n CE(f_θ(x_n), y_n)`` of the
BN-folded model (:attr:`MeasureContext.folded_model`) in eval mode, over the whole training set:
each mini-batch of :meth:`MeasureContext.batches` contributes its *summed* cross-entropy divided by
N, so the result does not depend on the batch size (up to rounding). The parameters θ are

- for :func:`hvp`, :func:`hessian_trace` and :func:`hessian_max_eigenvalue`: **all** parameters of
  the folded model (weights and biases), in ``named_parameters()`` order; for a network that
  cannot be folded, all parameters of the unfolded model, normalization parameters included
  (:func:`~genmeasures.measures.parameters.differentiated_parameters`);
- for :func:`hessian_diagonal`: the weight of every layer of :attr:`MeasureContext.layers` (biases
  are held fixed; they are no part of normalized sharpness, spec §1). The diagonal of the Hessian
  of L restricted to the weights equals the weights' entries of the full Hessian diagonal.

Derivatives are taken with ``torch.func`` on detached copies of the parameters, so neither the
caller's model nor the context's copy is modified. Results are float64 whatever the model's dtype.
Randomness comes only from generators of :meth:`MeasureContext.generator` (purposes below) or an
explicit ``generator`` argument. Probes are drawn one at a time, each probe as one Rademacher
tensor per differentiated parameter in order, with ``torch.randint(0, 2, shape)`` mapped to ±1; so
results do not depend on how probes are chunked.

Costs are counted in *gradient-equivalents*: one forward and backward pass over the training set.
A Hessian-vector product (forward-over-reverse) costs about two.

Modules: ``loss`` (the training loss as a function of the parameters, :func:`hvp`), ``diagonal``
(the table of Hessian-diagonal estimators, :func:`hessian_diagonal`), ``ggn`` (the Gauss-Newton
estimator and its per-layer-kind rules), ``spectrum`` (trace by Hutchinson, top eigenpair by
Lanczos).
"""

from genmeasures.measures.curvature.diagonal import (
    DEFAULT_EPS,
    DEFAULT_PROBES,
    DEFAULT_R,
    DIAGONAL_ESTIMATORS,
    DIAGONAL_PURPOSE,
    ESTIMATORS,
    DiagonalEstimator,
    hessian_diagonal,
)
from genmeasures.measures.curvature.ggn import LAYER_RULES, LayerRule
from genmeasures.measures.curvature.loss import CHUNK_BYTES, MAX_VECTORS_PER_PASS, Params, hvp
from genmeasures.measures.curvature.spectrum import (
    LANCZOS_PURPOSE,
    TRACE_PURPOSE,
    TopEigenpair,
    hessian_max_eigenvalue,
    hessian_top_eigenpair,
    hessian_trace,
    hessian_trace_samples,
    mean_and_standard_error,
)

# The private names imported above as themselves (_diagonal, _Loss, ...) are re-exported for
# the tests, which reach into them.
__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_EPS",
    "DEFAULT_PROBES",
    "DEFAULT_R",
    "DIAGONAL_ESTIMATORS",
    "DIAGONAL_PURPOSE",
    "ESTIMATORS",
    "LANCZOS_PURPOSE",
    "LAYER_RULES",
    "MAX_VECTORS_PER_PASS",
    "TRACE_PURPOSE",
    "DiagonalEstimator",
    "LayerRule",
    "Params",
    "TopEigenpair",
    "hessian_diagonal",
    "hessian_max_eigenvalue",
    "hessian_top_eigenpair",
    "hessian_trace",
    "hessian_trace_samples",
    "hvp",
    "mean_and_standard_error",
]
