"""/me: who the presented key belongs to, so a client (the dashboard) knows what it may do."""

from __future__ import annotations

from fastapi import APIRouter, Request

from hybrid_router.api.auth import Authenticator, UserDep
from hybrid_router.api.schemas import Caller

router = APIRouter(tags=["users"])


@router.get("/me")
async def me(user: UserDep, request: Request) -> Caller:
    """The caller's name and role; without `[users]` everyone is the admin "anonymous"."""
    authenticator: Authenticator = request.app.state.authenticator
    return Caller(
        name=user.name,
        role="admin" if user.is_admin else "user",
        keys_required=not authenticator.is_open,
    )
