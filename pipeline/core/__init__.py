"""The small core every other folder may import: settings, parameters, schema, MLflow tracking."""
