"""ARI: typed events (pure), REST client and events socket (asyncio adapters)."""
