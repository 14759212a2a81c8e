#!/usr/bin/python3
# Send one chat message as a real XMPP client (slixmpp 1.8), for the tests.
#
#   xmpp_send.py --jid bob@fabrikam.example --password pw \
#       --server 127.0.0.1:PORT --to alice@contoso.example --body hello \
#       [--type chat] [--wait SECS] [--timeout SECS] [--tls [--ca FILE]]
#
# Connects to --server (no SRV lookup), without TLS unless --tls, logs in
# with SASL (PLAIN allowed in the clear: loopback only), sends the message
# and closes the stream once it has left the send queue. With --wait, it
# lingers that many seconds for an error bounce from the recipient (e.g.
# remote-server-not-found) and reports it.
#
# Output: one JSON object per line on stdout ({"event": ...}); exit status
# 0 sent, 1 usage/connection/timeout, 2 authentication failed, 3 an error
# bounce arrived within --wait.

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from xmpp_common import (client, close, connect, finisher, on_failures,
                         out, parse, parser)


def main():
    ap = parser()
    ap.add_argument('--to', required=True)
    ap.add_argument('--body', required=True)
    ap.add_argument('--type', default='chat')
    ap.add_argument('--wait', type=float, default=0)
    a = parse(ap)

    loop, x, address = client(a)

    st = {'rc': 1}
    done, finish = finisher(loop, st)

    async def session_start(_):
        out(event='session', jid=str(x.boundjid))
        x.send_message(mto=a.to, mbody=a.body, mtype=a.type)
        out(event='sent', to=a.to, body=a.body)
        if a.wait > 0:
            await asyncio.sleep(a.wait)
        finish(0)

    def message(msg):
        if msg['type'] == 'error':
            out(event='error', **{'from': str(msg['from'])},
                condition=msg['error']['condition'],
                text=msg['error']['text'])
            finish(3)

    def disconnected(_):
        finish(st['rc'] if done.done() else 1)

    x.add_event_handler('session_start', session_start)
    x.add_event_handler('message', message)
    x.add_event_handler('message_error', message)
    on_failures(x, finish)
    x.add_event_handler('disconnected', disconnected)

    connect(x, a, address)

    try:
        loop.run_until_complete(asyncio.wait_for(done, a.timeout))
    except asyncio.TimeoutError:
        out(event='timeout')
        st['rc'] = 1

    # close the stream after the send queue is empty
    close(loop, x, 2.0, 4)
    return st['rc']


if __name__ == '__main__':
    sys.exit(main())
