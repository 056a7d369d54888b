"""Pure numpy statistics for federated survival analysis.

Each method has two halves side by side: the aggregate a site computes from its own rows, and
the estimator the coordinator computes from the sum of those aggregates. Nothing here imports
Flower or MLflow or touches files.
"""

from analysis.data import SurvivalData
from analysis.errors import UserError

__all__ = ["SurvivalData", "UserError"]
