"""What the tests share: databases, rows, generated images, HTTP helpers and the browser (registered as
pytest plugins by tests/conftest.py)."""
