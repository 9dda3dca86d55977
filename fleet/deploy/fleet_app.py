"""The FAB's entry points: the apps live in the installed s2fleet package."""

from s2fleet.deploy_apps import client_app, server_app

__all__ = ["client_app", "server_app"]
