"""Running notebooks headlessly and recording what they measure."""
from dslib.jobs.record import Run, read_record, start

__all__ = ["Run", "read_record", "start"]
