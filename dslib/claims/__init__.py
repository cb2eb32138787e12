"""The claims engine: chapters record evidence (numbers, conditions, measured or modelled), the
engine computes each verdict from those rows and the claim's definition in configs/claims.yaml.
No other module or notebook decides a verdict (tests/test_claims.py enforces it)."""
from dslib.claims.definitions import Claim, Quantity, load_claims, parse_claims
from dslib.claims.engine import NOT_CHECKED, VERDICTS, Decision, decide, describe_conditions
from dslib.claims.evidence import Evidence, make_evidence, record_evidence, record_origin
from dslib.claims.ledger import Entry, merge, preview

__all__ = ["Claim", "Decision", "Entry", "Evidence", "NOT_CHECKED", "Quantity", "VERDICTS", "decide",
           "describe_conditions", "load_claims", "make_evidence", "merge", "parse_claims", "preview",
           "record_evidence", "record_origin"]
