"""Asterisk ARI ExternalMedia <-> Pipecat WebSocket bridge."""
