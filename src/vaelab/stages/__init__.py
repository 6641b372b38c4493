"""One thin entry point per DVC stage (python -m vaelab.stages.<name>); only these touch paths, params, MLflow."""
