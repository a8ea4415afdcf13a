"""Talking back to GitHub: the REST client (``client``), who Forge is to GitHub (``auth``: a token
or a GitHub App) and what a release reports (``reports``, pure)."""
