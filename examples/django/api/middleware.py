"""GatewayIdentityMiddleware: who the gateway says the caller is.

When the gateway validates JWTs at the edge it sends the verified user id
upstream in `X-User-Id` (its `[identity] headers`), after deleting every
copy a client sent (any case, `_` for `-`). Views behind it can then skip
token verification entirely: this middleware sets

    request.gateway_user_id   # "42", or None

from that header, but only when the request really came from the gateway.
A header is only as trustworthy as the hop that set it: anything that can
reach gunicorn without going through the gateway can write X-User-Id too.

How "came from the gateway" is decided, and why: by the connection's peer,
not by a shared secret header.

- The recommended deployment binds gunicorn to a unix socket
  (`--bind unix:/run/gunicorn.sock`) that only the gateway's user may open
  (socket file mode / directory permissions). Then "connected through the
  unix socket" means "is the gateway", enforced by the kernel. gunicorn
  reports such connections with REMOTE_ADDR "" (no IP), which this
  middleware calls "unix".
- A TCP listener (say `--bind 127.0.0.1:8000` for debugging, or a second
  bind) is reachable by every local process, so its requests are not
  trusted unless the operator lists that address in GATEWAY_TRUSTED_PEERS
  (e.g. "10.0.0.5" when the gateway runs on another host and a firewall
  admits only it).
- A shared secret header would also work, but the gateway (like nginx
  without extra modules) has no setting to add a fixed header upstream, it
  would be one more secret to rotate, and a leaked secret is silent; the
  peer check needs nothing from the gateway and cannot leak.

Settings: GATEWAY_TRUSTED_PEERS (list of REMOTE_ADDR values, "unix" for
the unix socket; default ["unix"]). Requests from other peers get
`gateway_user_id = None` whatever they send, and the untrusted header is
removed from request.META so no later code reads it by mistake (its value
is kept in request.gateway_ignored_user_id for logging).
"""
from django.conf import settings

# WSGI spelling of X-User-Id (gunicorn maps x_user_id here too when its
# header_map lets underscores through).
META_KEY = "HTTP_X_USER_ID"


def peer_name(request):
    """"unix" for gunicorn's unix socket (REMOTE_ADDR is empty), else the IP."""
    return request.META.get("REMOTE_ADDR") or "unix"


class GatewayIdentityMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.trusted = set(getattr(settings, "GATEWAY_TRUSTED_PEERS", ["unix"]))

    def __call__(self, request):
        request.gateway_trusted = peer_name(request) in self.trusted
        if request.gateway_trusted:
            request.gateway_user_id = request.META.get(META_KEY) or None
        else:
            request.gateway_user_id = None
            # Kept aside (for logs and the example's /api/me/), never used.
            request.gateway_ignored_user_id = request.META.pop(META_KEY, None)
        return self.get_response(request)
