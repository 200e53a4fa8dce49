"""leukolab's model library: the semi-supervised WBC classifier of Song & Wang 2024.

Plain PyTorch, torchvision and scikit-learn; nothing here talks to a database, the web or
Celery. This package's ``__init__`` imports no torch, so the web process can use
``ml.images`` cheaply.
"""
