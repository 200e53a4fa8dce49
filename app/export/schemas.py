"""Export parameters and the documented responses of the export endpoints."""

from __future__ import annotations

from typing import Any, Literal

from app.errors import responses

LabelFormat = Literal["csv", "imagefolder", "coco"]
ModelFormat = Literal["onnx", "torchscript"]


ADMIN_ERRORS = responses(401, 403)
ZIP_CONTENT = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
LABELS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "format=csv: the CSV (text/csv); imagefolder or coco: a zip, streamed",
        "content": {"text/csv": {"schema": {"type": "string"}}, **ZIP_CONTENT},
    },
    **ADMIN_ERRORS,
    404: {**responses(404)[404], "description": "the model version named does not exist"},
    422: {
        **responses(422)[422],
        "description": "invalid parameters, or pseudo-labels or predictions asked for but no model version is active",
    },
}
MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "a zip of the network and its model card (JSON), streamed", "content": ZIP_CONTENT},
    **ADMIN_ERRORS,
    404: {
        **responses(404)[404],
        "description": "no such (or no active) model version, or it has no export in this format",
    },
    **responses(422),
}
