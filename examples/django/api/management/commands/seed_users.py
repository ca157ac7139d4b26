"""manage.py seed_users: the example's users, with known passwords.

    alice / alice-password   active
    bob   / bob-password     inactive (is_active=False): cannot log in
    carol / carol-password   active, staff

Idempotent: re-running resets the passwords and flags. Prints
{"username": pk, ...} as JSON on stdout so scripts and tests can find the
ids. Passwords are hashed with Django's default hasher (pbkdf2_sha256).
"""
import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

USERS = [
    # username, password, is_active, is_staff
    ("alice", "alice-password", True, False),
    ("bob", "bob-password", False, False),
    ("carol", "carol-password", True, True),
]


class Command(BaseCommand):
    help = "Create the example users (alice active, bob inactive, carol staff) with known passwords."

    def handle(self, *args, **options):
        User = get_user_model()
        ids = {}
        for username, password, active, staff in USERS:
            user, _ = User.objects.get_or_create(username=username)
            user.set_password(password)
            user.is_active = active
            user.is_staff = staff
            user.email = f"{username}@example.com"
            user.save()
            ids[username] = user.pk
        self.stdout.write(json.dumps(ids))
