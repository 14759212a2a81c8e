#!/usr/bin/python3
# Log in as a real XMPP client (slixmpp 1.8) and print the messages that
# arrive, for the tests.
#
#   xmpp_recv.py --jid alice@contoso.example --password pw \
#       --server 127.0.0.1:PORT [--count N] [--timeout SECS] [--tls [--ca FILE]]
#
# Connects to --server (no SRV lookup), without TLS unless --tls, logs in,
# sends initial presence (so that the server delivers offline messages)
# and prints every message with a body, one JSON object per line:
#   {"event": "message", "from": ..., "to": ..., "type": ..., "body": ...,
#    "delayed": true|false}
# It ends after --count messages (0: run until --timeout) or at --timeout.
# Exit status: 0 when --count messages arrived (or --count 0), 1 on
# timeout / connection failure, 2 on authentication failure.

import argparse
import asyncio
import json
import logging
import signal
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--jid', required=True)
    ap.add_argument('--password', required=True)
    ap.add_argument('--server', required=True, help='host:port of c2s')
    ap.add_argument('--count', type=int, default=1)
    ap.add_argument('--timeout', type=float, default=15)
    ap.add_argument('--tls', action='store_true')
    ap.add_argument('--ca', help='CA file to verify the server with')
    ap.add_argument('--debug', action='store_true')
    a = ap.parse_args()

    logging.basicConfig(stream=sys.stderr,
                        level=logging.DEBUG if a.debug else logging.WARNING,
                        format='%(levelname)s %(name)s %(message)s')

    host, port = a.server.rsplit(':', 1)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    x = slixmpp.ClientXMPP(a.jid, a.password)
    x.loop = loop
    x['feature_mechanisms'].unencrypted_plain = True
    if a.ca:
        x.ca_certs = a.ca
    x.register_plugin('xep_0030')
    x.register_plugin('xep_0203')   # delayed delivery (offline messages)

    st = {'rc': 1, 'n': 0}
    done = loop.create_future()

    def finish(rc):
        if not done.done():
            st['rc'] = rc
            done.set_result(rc)

    async def session_start(_):
        out(event='session', jid=str(x.boundjid))
        x.send_presence()

    def message(msg):
        if msg['type'] == 'error':
            out(event='error', **{'from': str(msg['from'])},
                condition=msg['error']['condition'])
            return
        if not msg['body']:
            return
        out(event='message', to=str(msg['to']), type=msg['type'],
            body=msg['body'], delayed=bool(msg['delay']['stamp']),
            **{'from': str(msg['from'])})
        st['n'] += 1
        if a.count and st['n'] >= a.count:
            finish(0)

    def failed_auth(_):
        out(event='failed_auth')
        finish(2)

    def connection_failed(err):
        out(event='connection_failed', error=str(err))
        finish(1)

    x.add_event_handler('session_start', session_start)
    x.add_event_handler('message', message)
    x.add_event_handler('failed_auth', failed_auth)
    x.add_event_handler('connection_failed', connection_failed)

    # SIGTERM: close the stream and end (background receivers)
    loop.add_signal_handler(signal.SIGTERM, finish, 0)

    x.connect(address=(host, int(port)), force_starttls=a.tls,
              disable_starttls=not a.tls)

    try:
        loop.run_until_complete(asyncio.wait_for(done, a.timeout))
    except asyncio.TimeoutError:
        if a.count:
            out(event='timeout', received=st['n'])
        st['rc'] = 1 if a.count else 0

    try:
        loop.run_until_complete(asyncio.wait_for(
            asyncio.ensure_future(x.disconnect(wait=1.0)), 3))
    except Exception:
        x.abort()

    shutdown(loop)
    return st['rc']


if __name__ == '__main__':
    sys.exit(main())
