"""GET /health: whether the database answers."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from acme_orders.core.database import DATABASE_ERRORS
from acme_orders.order_api.deps import Pool
from acme_orders.order_api.schemas import Health

health = APIRouter(prefix="/health", tags=["health"])


# Open to all: it is the healthcheck of docker compose and of load balancers, and says nothing
# about orders.
@health.get("", responses={503: {"model": Health, "description": "The database does not answer."}})
async def check_health(pool: Pool, response: Response) -> Health:
    """200 when the database answers, 503 when it does not."""
    try:
        await pool.fetchval("SELECT 1", timeout=2)
    except DATABASE_ERRORS:
        # Whatever the error, an outage or not: the database does not answer this process.
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers["Retry-After"] = "1"
        return Health(status="unavailable", database="down")
    return Health(status="ok", database="up")
