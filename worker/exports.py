"""Exporting a model version's network and model card: at registration (for the Models page's
downloads, which the torch-free web process only serves) and for ``leukolab export model``."""

from __future__ import annotations

import logging
from pathlib import Path

from app.db import session_scope
from app.export import service
from ml.checkpoint import load_checkpoint
from ml.export import FORMATS, SUFFIXES, export_model

log = logging.getLogger("leukolab.worker")


def export_version(*, model_id: int | None, out: Path, format: str) -> tuple[Path, Path]:
    """Write version ``model_id`` (the active one when None) as ``format`` to ``out`` with its
    card beside it; returns (network, card)."""
    with session_scope() as session:
        version = service.select_model_version(session=session, version_id=model_id)
        facts = service.model_facts(version)
        artefact = version.artefact_path
    card = export_model(load_checkpoint(artefact), out, format=format, facts=facts)
    return out, card


def write_registered_exports(model_id: int) -> None:
    """Every format of a newly registered version, where the Models page serves them from.
    A failure is logged, not raised: the version stays usable and the CLI can export it later."""
    try:
        with session_scope() as session:
            version = service.select_model_version(session=session, version_id=model_id)
            targets = {
                format: service.model_export_dir(version, format) / f"model-v{model_id}{SUFFIXES[format]}"
                for format in FORMATS
            }
        for format, path in targets.items():
            export_version(model_id=model_id, out=path, format=format)
    except Exception:  # noqa: BLE001 - an export must never fail the training run
        log.exception("could not export model version %s", model_id)
