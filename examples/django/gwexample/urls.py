from django.urls import path
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView, TokenVerifyView

from api import views

urlpatterns = [
    # simplejwt's own views, at the documented URLs.
    path("api/token/", TokenObtainPairView.as_view(), name="token_obtain_pair"),
    path("api/token/refresh/", TokenRefreshView.as_view(), name="token_refresh"),
    path("api/token/verify/", TokenVerifyView.as_view(), name="token_verify"),
    # DRF + simplejwt's JWTAuthentication: the token itself is verified here.
    path("api/whoami/", views.WhoAmI.as_view(), name="whoami"),
    # No token check in Django: identity from the gateway's X-User-Id.
    path("api/me/", views.me, name="me"),
    # The gateway's [tokens.credentials] upstream delegation.
    path("internal/authenticate", views.internal_authenticate, name="internal_authenticate"),
]
