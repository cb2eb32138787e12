"""dslib: the library behind the DeepSeek-style LLM training cookbook.

Importing dslib sets the offline environment (see dslib.env) before any
Hugging Face library is imported, so nothing loads from a hub at run time.
"""
from dslib import env as _env

_env.set_offline()

__version__ = "0.1.0"
