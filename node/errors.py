"""The exception hierarchy. Every error the node raises on purpose is a CalcnodeError."""


class CalcnodeError(Exception):
    """Base of every error calcnode raises on purpose."""


class ConfigError(CalcnodeError):
    """The configuration is invalid. ``problems`` lists one message per bad key."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UnusableImageError(CalcnodeError):
    """An input object cannot be analysed; the message says why, for a person."""


class ReportError(CalcnodeError):
    """An output object could not be built from the findings."""


class NotAnalysableError(UnusableImageError):
    """The object is not one calcnode analyses at all (another modality, a QC image, a
    multi-frame object): it is skipped, not counted as a failed detection."""


class SpoolError(CalcnodeError):
    """The spool could not keep an object durably (bad identifiers, disk errors)."""
