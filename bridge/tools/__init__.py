"""Tools beside the service, never imported by it: the simulated Asterisk (`sim`), the demo
(`demo`) and the benchmark (`bench`)."""
