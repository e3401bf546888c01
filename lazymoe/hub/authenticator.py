"""JupyterHub login for the group: the API keys file's members, with hub passwords (see setup)."""

from __future__ import annotations

from typing import Any

from jupyterhub.auth import Authenticator
from traitlets import Dict

from lazymoe.hub.passwords import PasswordFile
from lazymoe.hub.setup import HubSettings, members


class MemberAuthenticator(Authenticator):
    """Members of the keys file log in with their hub password; nobody else does."""

    settings_env = Dict(config=True, help="HubSettings.to_env() of the hub's settings")

    @property
    def settings(self) -> HubSettings:
        return HubSettings.from_env(self.settings_env)

    def check_allowed(self, username: str, authentication: Any = None) -> bool:
        return username in members(self.settings)  # read fresh: a revoked member is out at once

    async def authenticate(self, handler: Any, data: dict[str, str]) -> str | None:
        settings = self.settings
        user, password = data.get("username", "").strip(), data.get("password", "")
        if user not in members(settings):
            self.log.warning("login refused: %r is not in %s", user, settings.keys_file)
            return None
        passwords = PasswordFile(settings.passwords_file)
        if not passwords.has(user):
            if not settings.first_login:
                self.log.warning("login refused: %s has no password yet (lazymoe hub "
                                 "--set-password %s)", user, user)
                return None
            try:
                passwords.set(user, password)  # their first password becomes theirs
            except ValueError as exc:
                self.log.warning("first login of %s refused: %s", user, exc)
                return None
            self.log.info("%s set their password at first login", user)
            return user
        return user if passwords.check(user, password) else None
