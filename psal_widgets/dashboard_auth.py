"""jupyter_server's token check, answering 403 instead of a login form (loaded by Voila only).

``psal dashboard`` runs Voila with ``--Voila.identity_provider_class`` set to
:class:`TokenOnlyIdentityProvider`. Authentication is jupyter_server's own: the token in the URL
(or an ``Authorization: token ...`` header), then the login cookie it sets. Only the answer to a
request without either changes: Jupyter redirects a page request to a login form where a token
can be typed; the dashboard refuses it (403) with a message saying where the right URL is.
"""
from __future__ import annotations

import inspect
from typing import Any

from jupyter_server.auth.identity import PasswordIdentityProvider
from tornado import web

__all__ = ["REFUSED", "TokenOnlyIdentityProvider"]

REFUSED = ("this dashboard needs its token: open the URL with ?token=... that `psal dashboard` printed "
           "in its terminal")


class TokenOnlyIdentityProvider(PasswordIdentityProvider):
    """A request without the token (or its login cookie) gets 403 on every Jupyter route."""

    async def get_user(self, handler: web.RequestHandler) -> Any:  # type: ignore[override]
        user = super().get_user(handler)
        if inspect.isawaitable(user):
            user = await user
        if user is None:
            # As jupyter_server's own Host check does before its 403: the error page reads
            # current_user, which must then be set (to nobody).
            handler.current_user = handler._jupyter_current_user = None  # type: ignore[attr-defined]
            raise web.HTTPError(403, REFUSED, reason="Forbidden: " + REFUSED)
        return user
