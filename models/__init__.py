"""models layer of Mia: category propensity, ALS, blend, reasons, training, scoring, evaluation.

The public face. `models.registry` (MLflow) is imported where it is used, not here, so that
importing the models layer stays light.
"""

from models.blend import OfferBlend
from models.evaluate import capture_table, evaluate_against_oracle, oracle_table
from models.metrics import binary_metrics
from models.propensity import CategoryPropensity
from models.reasons import explain
from models.scoring import MODEL_NAME, ModelBundle, add_reasons, load_bundle, score_offers
from models.training import TrainingReport, train_models

__all__ = [
    "MODEL_NAME",
    "CategoryPropensity",
    "ModelBundle",
    "OfferBlend",
    "TrainingReport",
    "add_reasons",
    "binary_metrics",
    "capture_table",
    "evaluate_against_oracle",
    "explain",
    "load_bundle",
    "oracle_table",
    "score_offers",
    "train_models",
]
