"""The ``leukolab`` command line: wires the web app (app), the worker and the model code (ml, bench) together.

It lives outside ``app`` so that the web package never imports the worker or torch; ``python -m cli`` runs it.
"""
