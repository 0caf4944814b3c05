"""Models-from-code entry point of the logged pyfunc (MLflow runs this file on load).

Logging the model by file path instead of a pickled object means loading it executes only this
reviewed code, never a deserialised object.
"""

from mlflow.models import set_model

from models.pyfunc import AllianceRiskModel

set_model(AllianceRiskModel())
