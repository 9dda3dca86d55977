"""The Flower simulation tests need the fleet extra, which pins packages the daemon's own
venv has newer (fastapi, protobuf): `make test` runs them in .venv-fleet after the main
suite, so the main venv leaves them out."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("flwr") else ["test_simulation.py", "test_deployment.py"]
