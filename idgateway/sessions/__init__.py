"""Where a logged-in user's session lives: encrypted cookies (default) or Redis."""
