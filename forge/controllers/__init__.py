"""Controllers: independent reconcilers that meet only in the store (DESIGN §3)."""
