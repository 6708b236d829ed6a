"""The operations surface: what an operator sees and drives without reading logs (HTTP API,
metrics, webhooks, systemd notifications). Each is a reader of the calls' read model."""
