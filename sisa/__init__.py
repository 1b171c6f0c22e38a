"""sisa: exact machine unlearning by Sharded, Isolated, Sliced, Aggregated training.

    import sisa
    sisa.train("runs/a")                 # mnist5k, 5 shards x 4 slices
    sisa.forget("runs/a", [17, 42])      # exact: as if never trained on them
    sisa.evaluate("runs/a")["accuracy"]
"""

from sisa.errors import SisaError

_API = ("train", "forget", "add", "predict", "evaluate", "status", "ledger", "verify", "audit", "compare", "demo")
__all__ = ["Client", "Config", "SisaError", *_API]


def __getattr__(name):  # lazy: `import sisa` stays cheap (no numpy, no JAX); each loads on first use
    if name in _API:
        from sisa import api

        return getattr(api, name)
    if name == "Config":
        from sisa.config import Config

        return Config
    if name == "Client":
        from sisa.client import Client

        return Client
    raise AttributeError(f"module 'sisa' has no attribute {name!r}")
