"""The example's views: what the interop tests talk to."""
import json

from django.contrib.auth import authenticate, get_user_model
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.authentication import JWTAuthentication


def received_headers(request):
    """Every X-* request header as Django saw it (WSGI names turned back
    into X-Foo-Bar), so tests can tell exactly what reached the app."""
    out = {}
    for key, value in request.META.items():
        if key.startswith("HTTP_X_"):
            out["-".join(p.capitalize() for p in key[5:].split("_"))] = value
    return out


class WhoAmI(APIView):
    """GET /api/whoami/: simplejwt verifies the Bearer token itself.

    Answers the user it authenticated and the identity headers it got,
    so a test sees both views of the caller side by side."""

    authentication_classes = [JWTAuthentication]
    permission_classes = [IsAuthenticated]

    def get(self, request):
        return Response(
            {
                "user_id": request.user.pk,
                "username": request.user.get_username(),
                "token_claims": dict(request.auth.payload),
                "headers": received_headers(request),
                "gateway_user_id": request.gateway_user_id,
            }
        )


@require_GET
def me(request):
    """GET /api/me/: no token verification in Django at all; the caller is
    whoever GatewayIdentityMiddleware says the gateway vouched for."""
    uid = request.gateway_user_id
    if uid is None:
        return JsonResponse(
            {
                "detail": "Authentication credentials were not provided.",
                "trusted_peer": request.gateway_trusted,
                "ignored_x_user_id": getattr(request, "gateway_ignored_user_id", None),
                "headers": received_headers(request),
            },
            status=401,
        )
    user = get_user_model().objects.filter(pk=uid, is_active=True).first()
    return JsonResponse(
        {
            "user_id": uid,
            "username": user.get_username() if user else None,
            "trusted_peer": request.gateway_trusted,
            "headers": received_headers(request),
        }
    )


@csrf_exempt
@require_POST
def internal_authenticate(request):
    """POST /internal/authenticate: the gateway's credential delegation
    ([tokens.credentials] upstream + path).

    Body {"username","password"} (JSON). 200 {"user_id": pk, "claims": {...}}
    when django.contrib.auth.authenticate accepts them (ModelBackend refuses
    inactive users), 401 otherwise. The claims go into the gateway's access
    tokens; keep them small.

    Only the gateway may call this: it is meant for the gateway's direct
    connection, never for a client request the gateway proxies. Those always
    carry X-Forwarded-For (the gateway sets it on every proxied request;
    its credential check does not), so they are refused here as a second
    fence behind the gateway config, which should not route /internal/ at
    all (see the migration guide)."""
    if "HTTP_X_FORWARDED_FOR" in request.META or not getattr(request, "gateway_trusted", False):
        return JsonResponse({"detail": "Not found."}, status=404)
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"detail": "JSON parse error"}, status=400)
    if not isinstance(body, dict):
        return JsonResponse({"detail": "Expected a JSON object"}, status=400)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return JsonResponse({"detail": "username and password are required"}, status=400)
    user = authenticate(request, username=username, password=password)
    if user is None or not user.is_active:
        return JsonResponse({"detail": "No active account found with the given credentials"}, status=401)
    return JsonResponse({"user_id": user.pk, "claims": {"username": user.get_username()}})
