"""Estimators, calibration, explanation, the scorer and the MLflow model glue. Imports features."""
