"""OpenID Connect relying party: discovery, keys, the login flow and tokens."""
