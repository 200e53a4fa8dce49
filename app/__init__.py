"""leukolab's web process: FastAPI pages and API, services, SQLAlchemy models, settings."""
