"""`python -m bridge.tools.sim`: a SimulatedAsterisk on 127.0.0.1 for manual testing.

    python -m bridge.tools.sim --port 8088                      # ARI only; place calls from Python
    python -m bridge.tools.sim --port 8088 --calls 3 --scenario dtmf

With `--calls N`, N calls arrive (one every `--interval` seconds) once an app has connected its
events socket, as the dialplan would send them into `Stasis()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from bridge.tools.sim.asterisk import SimulatedAsterisk, StasisAppNotActive


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bridge.tools.sim", description=__doc__)
    parser.add_argument("--port", type=int, default=8088, help="HTTP/WebSocket port (0: any)")
    parser.add_argument("--user", default="asterisk")
    parser.add_argument("--password", default="asterisk")
    parser.add_argument("--app", default="pipecat", help="Stasis application name")
    parser.add_argument("--scenario", default="basic_ulaw", help="recorded scenario of the calls")
    parser.add_argument("--calls", type=int, default=0, help="calls to place once an app connects")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between calls")
    parser.add_argument(
        "--em-stasis-delay",
        type=float,
        default=0.0,
        help="UnicastRTP StasisStart delay after the externalMedia answer (negative: before)",
    )
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    sim = SimulatedAsterisk(
        user=args.user,
        password=args.password,
        app=args.app,
        port=args.port,
        em_stasis_delay=args.em_stasis_delay,
    )
    async with sim:
        print(sim.base_url, flush=True)
        print(f"events: {sim.events_url}", flush=True)
        for _ in range(args.calls):
            await sim.wait_app_active()
            try:
                call = await sim.place_call(args.scenario)
            except StasisAppNotActive as exc:  # the socket went away meanwhile, as in §16
                print(f"call failed: {exc}", flush=True)
            else:
                print(f"call {call.caller_id} ({args.scenario})", flush=True)
            await asyncio.sleep(args.interval)  # the pace at which calls arrive, not a wait
        await asyncio.Event().wait()  # serve until interrupted


def main(argv: list[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
