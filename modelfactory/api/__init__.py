"""The control plane: the factory's REST API (`/api/v1`, OpenAPI at `/openapi.json`, docs at `/docs`) and the web
dashboard at `/`, both served by `mf server` beside the scheduler and its workers.

Every route calls the layers (data, factory, compute, registry); none re-implements them. The tenant boundary is
enforced here, route by route: a tenant's key sees and touches only its own datasets, orders, jobs, models and
usage (someone else's answers 404, as if it did not exist), an admin key sees everything."""

from .app import create_app

__all__ = ["create_app"]
