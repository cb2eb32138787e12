"""Running notebooks headlessly and recording what they measure."""
from dslib.jobs.params import changed_parameters
from dslib.jobs.record import Run, read_record, start

__all__ = ["Run", "changed_parameters", "read_record", "start"]
