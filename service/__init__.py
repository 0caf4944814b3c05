"""FastAPI scoring service. Reads the model registry; never imports training."""
