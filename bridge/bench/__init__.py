"""`make bench`: the bridge against a naive relay, under the same load, in one invocation.

Process layout (each its own process, so one cannot steal the other's event loop):

    CPU 0   relay under test      `python -m bridge.cli run` (or bridge.bench.naive_relay)
    CPU 1   loadgen               fake Asterisk (ARI REST + events WebSocket) + echo bot
    CPU 1   rtpgen                one UDP socket per call, 20 ms RTP on one shared timer,
                                  records every packet that comes back (kernel timestamps)
    CPU 1   this orchestrator     starts them, samples /proc of the relay, prints the table

    rtpgen --RTP--> relay --Twilio JSON--> echo bot --Twilio JSON--> relay --RTP--> rtpgen

Modules: `rtpgen` (UDP), `loadgen` (ARI + calls), `echo_bot` (bot WebSocket server),
`naive_relay` (the baseline), `procstat` (/proc), `report` (metrics, table), `__main__` (CLI).
"""
