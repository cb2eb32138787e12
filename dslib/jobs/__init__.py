"""Running notebooks headlessly and recording what they measure."""
from dslib.jobs.record import Run, load_claims, read_record, start

__all__ = ["Run", "load_claims", "read_record", "start"]
