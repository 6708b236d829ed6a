"""Asterisk <-> Pipecat bridge.

Where a packet goes, in the order it travels:

    media/     the media legs to Asterisk (RTP today), the shared 20 ms clock, the port pool
    call/      one call: its pure state machine, the commands it emits, the runner doing its I/O
    bot/       the bot side: the WebSocket connection and the Twilio/Exotel/Vonage dialects
    service/   the long-lived process: controller (routing, reconcile, admission), config, CLI
    tools/     not the service: the simulated Asterisk, the demo, the benchmark

`errors` (the one error tree) and `logs` (structlog set-up, redaction) are leaf modules that
`ari/` and `rtp/` import too; importing them loads none of the service.
"""
