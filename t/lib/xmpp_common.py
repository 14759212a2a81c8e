# Shared by xmpp_send.py and xmpp_recv.py: the common command line, the
# slixmpp client setup, JSON output and the quiet shutdown.

import argparse
import asyncio
import json
import logging
import sys

import slixmpp


def out(**kw):
    print(json.dumps(kw), flush=True)


def shutdown(loop):
    # cancel what slixmpp leaves pending, quietly
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        loop.run_until_complete(
            asyncio.gather(*pending, return_exceptions=True))
    loop.close()


def parser():
    # the options both scripts take first; the script adds its own, then
    # parse() adds the rest, so that --help lists them in the same order
    ap = argparse.ArgumentParser()
    ap.add_argument('--jid', required=True)
    ap.add_argument('--password', required=True)
    ap.add_argument('--server', required=True, help='host:port of c2s')
    return ap


def parse(ap):
    ap.add_argument('--timeout', type=float, default=15)
    ap.add_argument('--tls', action='store_true')
    ap.add_argument('--ca', help='CA file to verify the server with')
    ap.add_argument('--debug', action='store_true')
    a = ap.parse_args()

    logging.basicConfig(stream=sys.stderr,
                        level=logging.DEBUG if a.debug else logging.WARNING,
                        format='%(levelname)s %(name)s %(message)s')
    return a


def client(a):
    # a new event loop and a ClientXMPP on it, PLAIN allowed in the clear;
    # also the (host, port) of --server
    host, port = a.server.rsplit(':', 1)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    x = slixmpp.ClientXMPP(a.jid, a.password)
    x.loop = loop
    x['feature_mechanisms'].unencrypted_plain = True
    if a.ca:
        x.ca_certs = a.ca
    x.register_plugin('xep_0030')
    return loop, x, (host, int(port))


def finisher(loop, st):
    # the future main() waits for, and finish(rc) to resolve it once
    done = loop.create_future()

    def finish(rc):
        if not done.done():
            st['rc'] = rc
            done.set_result(rc)

    return done, finish


def on_failures(x, finish):
    # authentication failure: exit status 2; no connection: 1

    def failed_auth(_):
        out(event='failed_auth')
        finish(2)

    def connection_failed(err):
        out(event='connection_failed', error=str(err))
        finish(1)

    x.add_event_handler('failed_auth', failed_auth)
    x.add_event_handler('connection_failed', connection_failed)


def connect(x, a, address):
    x.connect(address=address, force_starttls=a.tls,
              disable_starttls=not a.tls)


def close(loop, x, wait, timeout):
    # close the stream (after the send queue is empty), then the loop
    try:
        loop.run_until_complete(asyncio.wait_for(
            asyncio.ensure_future(x.disconnect(wait=wait)), timeout))
    except Exception:
        x.abort()

    shutdown(loop)
