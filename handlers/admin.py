"""The base of the admin pages (``/dashboard``, ``/stats``, ``/links``): admins only.

On App Engine and under dev_appserver, app.yaml's ``login: admin`` keeps
everyone else out before the app runs; this checks it again in the app with
the Users API, in case a handler is ever reached another way. ``python main.py``
makes every request an admin's (it listens on 127.0.0.1 only, and says so).
"""

from __future__ import annotations

from google.appengine.api import users

from clicks.http_errors import AdminRequiredError
from handlers.base import JsonHandler


class AdminHandler(JsonHandler):
    """Answers admins only: anyone not signed in is sent to sign in (``sign_in_redirects``)
    or refused with the sign-in URL; a signed-in non-admin is refused."""

    sign_in_redirects = False
    """A page a person opens redirects to the sign-in page; an API answers 403 with its URL."""

    def dispatch(self) -> None:
        if not users.is_current_user_admin():
            if users.get_current_user() is not None:
                raise AdminRequiredError("only the app's admins may see this; sign in as one")
            login_url = users.create_login_url(self.request.url)
            if self.sign_in_redirects:
                self.redirect(login_url, abort=True)
            raise AdminRequiredError(f"only the app's admins may see this; sign in at {login_url}")
        super().dispatch()
