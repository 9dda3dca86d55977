"""The Flower simulation tests need the fleet extra, which pins packages the daemon's own
venv has newer (fastapi, protobuf): `make test` runs them in .venv-fleet after the main
suite, so the main venv leaves them out."""

import importlib.util

FLOWER_TESTS = ["test_simulation.py", "test_member.py", "test_deployment.py", "test_deploy_apps.py", "test_rollout.py", "test_apps.py"]
collect_ignore = [] if importlib.util.find_spec("flwr") else list(FLOWER_TESTS)
if not importlib.util.find_spec("cryptography"):  # flwr brings it; the main venv has it with runtime[sign]
    collect_ignore.append("test_keys.py")
