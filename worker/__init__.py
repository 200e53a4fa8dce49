"""The glue between the web app and the model library: Celery tasks that load rows through
``app``'s models and services, call ``ml/``, and write results back. Arrows point
worker → app and worker → ml, never back."""
