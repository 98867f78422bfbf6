"""The HTTP API (FastAPI). Never imports the worker or backends: no torch here."""
