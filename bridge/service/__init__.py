"""The service process: the controller (one events socket, the call registry), its settings
and the `pipecat-bridge` command line."""
