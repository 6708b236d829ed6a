"""`make bench`: the bridge against a naive relay, under the same load, in one invocation.

Process layout (each its own process, so one cannot steal the other's event loop):

    CPU 0   relay under test      `pipecat-bridge run` (or bridge.tools.bench.naive_relay)
    CPU 1   loadgen               fake Asterisk (ARI REST + events WebSocket) + echo bot
    CPU 1   rtpgen                one UDP socket per call, 20 ms RTP on one shared timer,
                                  records every packet that comes back (kernel timestamps)
    CPU 1   this orchestrator     starts them, samples /proc of the relay, prints the table

    rtpgen --RTP--> relay --Twilio JSON--> echo bot --Twilio JSON--> relay --RTP--> rtpgen

Run: `make bench` (N=50, 200, 500 with both bots, then a search for the largest N the bridge
carries; a few minutes), `make bench BENCH_ARGS=--quick` (~30 s), or
`python -m bridge.tools.bench --calls 200 --seconds 10 --bots echo --relays bridge+uvloop,naive
--py-spy --out-dir out/` (`bridge+uvloop` runs the unmodified CLI on uvloop; `--py-spy`
leaves a raw py-spy profile of the relay's window next to the records). A run that did not
measure what it claims (generator late, harness core saturated, other processes on the
relay's core, calls not up, channels left behind) is flagged under its block of the table.

`--transport audiosocket|websocket` (`make bench TRANSPORT=...`): rtpgen plays Asterisk's end of
the bridge's AudioSocket or chan_websocket connections instead (the loadgen opens each one and
hands it over); the naive relay is RTP-only, so its column says n/a.

`--workers N --dispatch broadcast` (`make bench BENCH_ARGS="--workers 2 --dispatch broadcast
--calls 200 --bots echo --no-search"`): the bridge as a --workers supervisor, every call
offered with StasisBroadcast and claimed; per worker its share of the calls and CPU, and the
claim latency. Every run also says where packets went (kernel drops on either side's UDP
sockets, the bridge's reorder window, bot send queue and playout queue); `--stall MS/EVERY_S`
pauses the relay as CPU steal pauses a VM.

Modules: `rtpgen` (UDP), `loadgen` (ARI + calls), `dispatch` (StasisBroadcast and claims,
pure), `echo_bot` (bot WebSocket server), `naive_relay` (the baseline), `procs` (/proc,
pinning, stalls), `losses` (where packets went), `report` (metrics, table), `__main__` (CLI).
"""
