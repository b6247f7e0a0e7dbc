"""Score how well measures predict generalization (Jiang et al. 2020, §2.2, §4.1, appendix B).

The input is a plain table (a pandas DataFrame) with one row per trained model: a column per
hyperparameter type, the generalization gap and a column per measure. Nothing here reads a model
or imports torch, so a CSV from elsewhere is scored the same way as a study folder's table.

- :func:`kendall_tau`, :func:`granulated_tau`: τ (eq 2), ψ_i and Ψ (eqs 3-5).
- :func:`conditional_mi`: Î(μ, S) and K (eqs 11-14), and the PGDL competition's variant.
- :mod:`~genmeasures.evaluate.baselines`: the ε-oracle, canonical orderings, a random measure.
- :func:`score_table`: every measure and baseline at once, as the paper's tables.
- :func:`robust_scores`: the sign-error over environments, its mean, 90th percentile and worst
  case (Dziugaite et al. 2020); :func:`gap_prediction`: the held-out R² of the gap on each measure;
  :func:`with_robust_scores`: both added to a :func:`score_table` evaluation.
"""

from genmeasures.evaluate.baselines import ORACLE_EPSILONS, canonical_rank
from genmeasures.evaluate.cmi import ConditionalMI, conditional_mi
from genmeasures.evaluate.prediction import gap_prediction
from genmeasures.evaluate.rank import GranulatedTau, granulated_tau, kendall_tau
from genmeasures.evaluate.robust import RobustEvaluation, robust_scores, with_robust_scores
from genmeasures.evaluate.scoring import Evaluation, measure_columns, score_table
from genmeasures.evaluate.table import read_table

__all__ = [
    "ORACLE_EPSILONS",
    "ConditionalMI",
    "Evaluation",
    "GranulatedTau",
    "RobustEvaluation",
    "canonical_rank",
    "conditional_mi",
    "gap_prediction",
    "granulated_tau",
    "kendall_tau",
    "measure_columns",
    "read_table",
    "robust_scores",
    "score_table",
    "with_robust_scores",
]
