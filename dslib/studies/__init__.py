"""What only a chapter uses: its sweeps, comparisons, reports, plots and demo data.

A notebook calls its study module; a study calls the library (dslib.<package>); the library
never imports a study (tests/test_layers.py enforces it).
"""
