"""The closed sets of values stored in string columns: the code and the CHECK constraints both read them from here."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    CYTOLOGIST = "cytologist"
    ADMIN = "admin"


class LabelKind(StrEnum):
    LABEL = "label"
    UNDO = "undo"


class LabelSource(StrEnum):
    MANUAL = "manual"  # given on the labelling page or through the API; the only kind a user can undo
    IMPORT = "import"  # an ImageFolder's class sub-folders, imported with --labelled
    REVIEW = "review"  # a bulk action on the review grid (labels.action_id groups its rows)
    ADJUDICATION = "adjudication"  # an admin's decision between two readers who disagree
    MERGE = "merge"  # a class merged into another, or that merge undone (labels.class_event_id)


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)


class ModelOrigin(StrEnum):
    """Where a model version comes from."""

    LOCAL = "local"  # trained by this instance on its own labels
    REFERENCE = "reference"  # installed from a file (leukolab reference install), trained elsewhere


class ScoringStatus(StrEnum):
    """Scoring of the unlabelled cells by a model version after its promotion."""

    IDLE = "idle"
    QUEUED = "queued"
    SCORING = "scoring"
    REFRESHING = "refreshing"  # nothing to score: only the queue and the review page are rebuilt
    READY = "ready"
    FAILED = "failed"


BUSY_SCORING_STATUSES = (ScoringStatus.QUEUED, ScoringStatus.SCORING, ScoringStatus.REFRESHING)


class FilterOutcome(StrEnum):
    """What the pseudo-label filters made of a prediction (ml/pseudo.py writes the same strings)."""

    PASSED_ENTROPY = "passed_entropy"
    PASSED_PROPAGATION = "passed_propagation"
    REJECTED = "rejected"


def one_of(column: str, values: type[StrEnum]) -> str:
    """The SQL of a CHECK constraint that ``column`` holds one of ``values``."""
    return f"{column} in ({', '.join(repr(str(value)) for value in values)})"
