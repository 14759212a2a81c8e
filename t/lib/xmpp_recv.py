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

import asyncio
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from xmpp_common import (client, close, connect, finisher, on_failures,
                         out, parse, parser)


def main():
    ap = parser()
    ap.add_argument('--count', type=int, default=1)
    a = parse(ap)

    loop, x, address = client(a)
    x.register_plugin('xep_0203')   # delayed delivery (offline messages)

    st = {'rc': 1, 'n': 0}
    done, finish = finisher(loop, st)

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

    x.add_event_handler('session_start', session_start)
    x.add_event_handler('message', message)
    on_failures(x, finish)

    # SIGTERM: close the stream and end (background receivers)
    loop.add_signal_handler(signal.SIGTERM, finish, 0)

    connect(x, a, address)

    try:
        loop.run_until_complete(asyncio.wait_for(done, a.timeout))
    except asyncio.TimeoutError:
        if a.count:
            out(event='timeout', received=st['n'])
        st['rc'] = 1 if a.count else 0

    close(loop, x, 1.0, 3)
    return st['rc']


if __name__ == '__main__':
    sys.exit(main())
