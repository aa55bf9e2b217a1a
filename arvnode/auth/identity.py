"""Who a request is: the answer every service gets from token checking."""
from __future__ import annotations

from attrs import frozen


@frozen
class Identity:
    """An authenticated caller.

    ``token`` is the token string exactly as the client presented it: Keep
    signatures are computed over it verbatim (spec 2.5), so it must never be
    normalised (a v1 secret and its v2 form sign differently).
    """

    user_uuid: str
    token: str
    token_uuid: str
    is_admin: bool = False
    is_active: bool = True
    is_anonymous: bool = False
    scopes: tuple[str, ...] = ("all",)
    expires_at: float | None = None
