"""Running notebooks headlessly and recording what they measure."""
from dslib.jobs.params import changed_parameters
from dslib.jobs.record import Run, load_claims, read_record, start

__all__ = ["Run", "changed_parameters", "load_claims", "read_record", "start"]
