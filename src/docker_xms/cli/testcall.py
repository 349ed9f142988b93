"""`docker-xms test-call`: a short call against a running container with its profile's client."""

from __future__ import annotations

from dataclasses import asdict

import click


@click.command("test-call")
@click.argument("name")
@click.option(
    "--from",
    "from_address",
    metavar="ADDR",
    help="Local address both legs use (default: the one of this host that reaches the media server).",
)
@click.option(
    "--seconds",
    type=float,
    default=3.0,
    show_default=True,
    help="How long the rtpengine client sends 20 ms packets each way, or the browser's call is measured (SIPp plays its 7 s recording).",
)
@click.option(
    "--screenshot",
    metavar="PATH",
    help="Where a browser call (janus) saves its screenshot [default: NAME-test-call.png here].",
)
@click.option(
    "--control",
    metavar="ADDR[:PORT]",
    default=None,
    help="Where rtpengine's ng control port is reached (default: where this host reaches its published port; "
    "from another network namespace, e.g. the container's address).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def test_call(
    name: str, from_address: str | None, seconds: float, screenshot: str | None, control: str | None, as_json: bool
) -> None:
    """Place a short test call through container NAME: answered, packets sent and received each way, jitter.

    Exits 1 when the call is not answered or a direction receives less than 90% of what was sent, 2 for bad
    input (unknown, stopped or unmanaged container, a profile without a test-call client). For janus, headless
    Chromium (Debian chromium and chromium-driver) makes an echo call and reports its own WebRTC statistics.
    """
    from docker_xms.cli import context
    from docker_xms.cli.render import print_json
    from docker_xms.usecases import testcall

    request = testcall.TestCallRequest(name, from_address, seconds, screenshot, control)
    result = testcall.test_call(context.engine(), context.profile, request)
    if as_json:
        print_json({**asdict(result), "media_flows": result.media_flows, "ok": result.ok})
    else:
        click.echo(f"{result.name} ({result.profile}, {result.client} via {result.server}, from {result.local}):")
        browser = result.client == "janus-echo"
        state = "answered" if result.answered else "not answered"
        if browser:
            state = "connected over DTLS-SRTP" if result.answered else "not connected"
        setup = f" in {result.setup_ms:.0f} ms" if result.setup_ms is not None else ""
        click.echo(f"  call: {state}{setup}")
        if browser and result.remote_candidate:
            click.echo(f"  ICE: {result.local_candidate} -> {result.remote_candidate}")
        for d in result.directions:
            jitter = f"{d.jitter_ms:.2f} ms" if d.jitter_ms is not None else "-"
            extra = ""
            if d.bytes_received is not None:
                extra = f" ({d.bytes_received} bytes), lost {d.packets_lost}"
                extra += f", frames dropped {d.frames_dropped}" if d.frames_dropped is not None else ""
            click.echo(f"  {d.name}: sent {d.sent}, received {d.received}{extra}, jitter {jitter}")
        if browser:
            rtt = f"{result.rtt_ms:.1f} ms" if result.rtt_ms is not None else "-"
            click.echo(f"  round trip: {rtt}")
            click.echo(f"  screenshot: {result.screenshot}")
        click.echo(f"  counted: {result.measured}")
    problem = result.problem()
    if problem:
        raise testcall.CallFailed(problem)
