"""The control plane: the factory's REST API (`/api/v1`, OpenAPI at `/openapi.json`, docs at `/docs`) and the web
dashboard at `/`, both served by `mf server` beside the scheduler and its workers.

Every route calls the layers (data, factory, compute, registry); none re-implements them. The tenant boundary is
enforced here, route by route: a tenant's key sees and touches only its own datasets, orders, jobs, models and
usage (someone else's answers 404, as if it did not exist), an admin key sees everything."""

__all__ = ["create_app"]


def __getattr__(name: str):
    """`create_app` on first use: importing the package (e.g. the CLI's `api.client`) loads no server code."""
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
